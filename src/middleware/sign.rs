//! Sign: the upstream request is built here. The caller's query string and credential and
//! hop-by-hop headers are dropped; the query becomes exactly `sdkappid`, `identifier`,
//! `usersig`, `random` and `contenttype=json`; the body bytes go on unchanged.

use std::fmt::Write;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::Full;
use tower::{Layer, Service};

use super::GatewayResponse;
use crate::credentials::Credentials;
use crate::error::GatewayError;
use crate::upstream::targets::UpstreamBase;

#[derive(Debug, Clone)]
pub struct SignLayer {
    credentials: Arc<Credentials>,
    primary: Arc<str>,
}

impl SignLayer {
    pub fn new(credentials: Arc<Credentials>, primary: Arc<str>) -> Self {
        SignLayer {
            credentials,
            primary,
        }
    }
}

impl<S> Layer<S> for SignLayer {
    type Service = Sign<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Sign {
            inner,
            credentials: self.credentials.clone(),
            primary: self.primary.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sign<S> {
    inner: S,
    credentials: Arc<Credentials>,
    primary: Arc<str>,
}

impl<S> Service<Request<Bytes>> for Sign<S>
where
    S: Service<Request<Full<Bytes>>, Response = GatewayResponse, Error = GatewayError>,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let base = parts
            .extensions
            .get::<UpstreamBase>()
            .map_or_else(|| self.primary.clone(), |b| b.0.clone());
        parts.uri = upstream_uri(
            &base,
            parts.uri.path(),
            self.credentials.current().query_prefix(),
        );
        strip_caller_headers(&mut parts.headers);
        if !parts.headers.contains_key(header::CONTENT_TYPE) {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        parts.version = http::Version::HTTP_11;
        self.inner.call(Request::from_parts(parts, Full::new(body)))
    }
}

/// `{base}{path}?{prefix}{random}&contenttype=json`. Base and path were checked before (config
/// and allow-list), so the result always parses; should it not, the empty URI makes the
/// client fail the request instead of sending it anywhere.
pub fn upstream_uri(base: &str, path: &str, query_prefix: &str) -> Uri {
    let mut text = String::with_capacity(base.len() + path.len() + query_prefix.len() + 32);
    text.push_str(base);
    text.push_str(path);
    text.push('?');
    text.push_str(query_prefix);
    let _ = write!(text, "{}", rand::random::<u32>());
    text.push_str("&contenttype=json");
    Uri::try_from(text).unwrap_or_default()
}

/// Headers that never go upstream: credentials meant for the gateway, cookies, the caller's
/// Host, and hop-by-hop headers (RFC 9110 7.6.1), including those named by `Connection`.
fn strip_caller_headers(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in [
        header::HOST,
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        header::COOKIE,
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::CONTENT_LENGTH,
        header::EXPECT,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_has_exactly_the_five_query_keys() {
        let uri = upstream_uri(
            "https://example.com:8443",
            "/v4/a/b",
            "sdkappid=1&identifier=admin&usersig=abc&random=",
        );
        assert_eq!(uri.scheme_str(), Some("https"));
        assert_eq!(
            uri.authority().map(|a| a.as_str()),
            Some("example.com:8443")
        );
        assert_eq!(uri.path(), "/v4/a/b");
        let keys: Vec<&str> = uri
            .query()
            .expect("query")
            .split('&')
            .filter_map(|kv| kv.split('=').next())
            .collect();
        assert_eq!(
            keys,
            ["sdkappid", "identifier", "usersig", "random", "contenttype"]
        );
        let random = uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("random=")))
            .expect("random");
        assert!(random.parse::<u32>().is_ok());
        assert!(uri.query().expect("query").ends_with("&contenttype=json"));
    }

    #[test]
    fn caller_credentials_and_hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer t"),
            ("cookie", "a=b"),
            ("host", "gateway"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-request-id", "abc"),
            ("user-agent", "svc/1.0"),
        ] {
            headers.append(k, HeaderValue::from_static(v));
        }
        strip_caller_headers(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-request-id", "user-agent"]);
    }
}
