//! Auth: with `[auth] tokens_file` set, only callers with a known bearer token get past this
//! point; checked before anything else about the request is looked at.

use std::sync::Arc;

use http::Request;

use super::check::Check;
use crate::auth::Authenticator;
use crate::error::GatewayError;
use crate::server::accept::ClientCertified;

#[derive(Debug, Clone)]
pub struct Authenticate {
    /// `None`: callers are not authenticated (a sidecar on 127.0.0.1).
    authenticator: Option<Arc<Authenticator>>,
}

impl Authenticate {
    pub fn new(authenticator: Option<Arc<Authenticator>>) -> Self {
        Authenticate { authenticator }
    }
}

impl<B> Check<B> for Authenticate {
    fn check(&self, req: &mut Request<B>) -> Result<(), GatewayError> {
        let Some(auth) = &self.authenticator else {
            return Ok(());
        };
        // A client certificate checked against server.tls_client_ca_file stands in for a token.
        if req.extensions().get::<ClientCertified>().is_some() {
            return Ok(());
        }
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if auth.check(header) {
            Ok(())
        } else {
            Err(GatewayError::Unauthorized)
        }
    }
}
