//! The request pipeline's layers, one file each; `stack.rs` puts them in order.

pub mod allow;
pub mod auth;
pub mod body;
pub mod check;
pub mod content_coding;
pub mod drain;
pub mod leftover;
pub mod observe;
pub mod rate_limit;
pub mod rescue;
pub mod retry;
pub mod shed;
pub mod sign;
pub mod validate;
