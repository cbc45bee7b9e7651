//! Allow-list: only `POST /v4/{service}/{command}` for allowed APIs goes on, before any of the
//! body is read. The routed `Api` travels on as a request extension.

use std::sync::Arc;

use http::{Method, Request};

use super::check::Check;
use crate::api::{api_of_path, Api, ApiTable};
use crate::error::GatewayError;

#[derive(Debug, Clone)]
pub struct Allow {
    table: Arc<ApiTable>,
}

impl<B> Check<B> for Allow {
    fn check(&self, req: &mut Request<B>) -> Result<(), GatewayError> {
        let api = self.route(req)?;
        req.extensions_mut().insert(api);
        Ok(())
    }
}

impl Allow {
    pub fn new(table: Arc<ApiTable>) -> Self {
        Allow { table }
    }

    fn route<B>(&self, req: &Request<B>) -> Result<Api, GatewayError> {
        if req.method() == Method::CONNECT {
            return Err(GatewayError::Connect);
        }
        // An HTTP/1 absolute-form target (`POST http://elsewhere/v4/...`) names a host: refuse
        // it rather than seem to follow it. (HTTP/2 always carries :authority; the upstream
        // host comes from config either way.)
        let http1 = req.version() <= http::Version::HTTP_11;
        if http1 && (req.uri().authority().is_some() || req.uri().scheme().is_some()) {
            return Err(GatewayError::NotAllowed(
                "the request target must be a path (/v4/{service}/{command}), not an absolute URL"
                    .into(),
            ));
        }
        // The upstream host comes only from config, but a request with an ambiguous or
        // malformed Host is refused rather than passed along to a layer that might trust it.
        let mut hosts = req.headers().get_all(http::header::HOST).iter();
        let host_ok = match (hosts.next(), hosts.next()) {
            (None, _) => true,
            (Some(_), Some(_)) => false,
            (Some(host), None) => host
                .to_str()
                .ok()
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .is_some_and(|a| {
                    !a.as_str().contains('@') && !a.host().is_empty() && port_ok(a.as_str())
                }),
        };
        if !host_ok {
            return Err(GatewayError::NotAllowed(
                "the Host header must appear at most once and name a host".into(),
            ));
        }
        let path = req.uri().path();
        let Some(name) = api_of_path(path) else {
            return Err(GatewayError::NotAllowed(
                "the path must be /v4/{service}/{command} (letters, digits and underscores)".into(),
            ));
        };
        if req.method() != Method::POST {
            return Err(GatewayError::NotAllowed(format!(
                "{} is not allowed; Chat REST APIs take POST",
                req.method()
            )));
        }
        self.table.route(path).ok_or_else(|| {
            GatewayError::NotAllowed(format!("{name} is not on this gateway's allow-list"))
        })
    }
}

/// The port of `host[:port]`, when there is one, is a number from 0 to 65535 (the authority
/// parser takes any digits).
fn port_ok(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        Some((_, port)) if !port.contains(']') => port.is_empty() || port.parse::<u16>().is_ok(),
        _ => true,
    }
}
