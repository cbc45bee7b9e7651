//! Integration tests: every request goes through real sockets on 127.0.0.1.

mod answers;
mod binary;
mod faults;
mod forwarding;
mod observability;
mod rate_limit;
mod redis_limits;
mod redis_server;
mod soak;
mod support;
mod validation;
