//! Integration tests: every request goes through real sockets on 127.0.0.1.

mod answers;
mod binary;
mod caller_tls;
mod coalesce;
mod content_coding;
mod early_answers;
mod failover;
mod faults;
mod forwarding;
mod hardening;
mod limit_overrides;
mod observability;
mod rate_limit;
mod redis_faults;
mod redis_fleet;
mod redis_limits;
mod redis_server;
mod soak;
mod support;
mod traces;
mod validation;
