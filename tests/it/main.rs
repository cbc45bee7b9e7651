//! Integration tests: every request goes through real sockets on 127.0.0.1.

mod answers;
mod binary;
mod coalesce;
mod faults;
mod forwarding;
mod observability;
mod rate_limit;
mod soak;
mod support;
mod validation;
