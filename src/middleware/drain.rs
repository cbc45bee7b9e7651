//! Drain: once the drain delay after a shutdown signal is over, requests that still arrive on
//! open keep-alive connections get the `draining` answer instead of starting new work.

use std::sync::Arc;

use http::Request;

use super::check::Check;
use crate::error::GatewayError;
use crate::lifecycle::Lifecycle;

#[derive(Debug, Clone)]
pub struct Drain {
    lifecycle: Arc<Lifecycle>,
}

impl Drain {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Drain { lifecycle }
    }
}

impl<B> Check<B> for Drain {
    fn check(&self, _req: &mut Request<B>) -> Result<(), GatewayError> {
        if self.lifecycle.is_closing() {
            return Err(GatewayError::Draining);
        }
        Ok(())
    }
}
