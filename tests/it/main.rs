//! Integration tests: every request goes through real sockets on 127.0.0.1.

mod answers;
mod binary;
mod forwarding;
mod rate_limit;
mod support;
mod validation;
