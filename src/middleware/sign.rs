//! Sign: the upstream request is built here. The caller's query string and headers are
//! dropped; the headers become an allow-list of the gateway's own (`Content-Type:
//! application/json`, its `User-Agent`, `Accept-Encoding: identity`, the request id; hyper
//! adds `Content-Length`), the query exactly `sdkappid`, `identifier`, `usersig`, `random`
//! and `contenttype=json`; the body bytes go on unchanged.

use std::fmt::Write;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::Full;
use tower::{Layer, Service};

use crate::credentials::Credentials;
use crate::error::GatewayError;
use crate::exchange::{GatewayResponse, RequestId};
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
        set_upstream_headers(&mut parts.headers, parts.extensions.get::<RequestId>());
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

const USER_AGENT: &str = concat!("chat-gateway/", env!("CARGO_PKG_VERSION"));

/// The upstream request's headers: an allow-list, none of them the caller's. Whatever a
/// caller sends (forwarding headers, cookies, ranges, validators, encodings, a second or
/// malformed Content-Type) never reaches Tencent; identity encoding keeps the answer plain
/// JSON, as callers get it and as the ErrorCode is read.
fn set_upstream_headers(headers: &mut HeaderMap, request_id: Option<&RequestId>) {
    // The caller's map is emptied and refilled: its room is reused, nothing of it is kept.
    headers.clear();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if let Some(id) = request_id {
        headers.insert(HeaderName::from_static("x-request-id"), id.0.clone());
    }
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
    fn upstream_headers_are_the_gateways_own() {
        let id = RequestId(HeaderValue::from_static("0000abcd-1"));
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", "10.0.0.1"),
            ("cookie", "a=b"),
            ("content-type", "text/plain"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        set_upstream_headers(&mut headers, Some(&id));
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "user-agent",
                "accept-encoding",
                "x-request-id"
            ]
        );
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers[header::ACCEPT_ENCODING], "identity");
        assert!(headers[header::USER_AGENT]
            .to_str()
            .expect("ascii")
            .starts_with("chat-gateway/"));
        let mut headers = HeaderMap::new();
        set_upstream_headers(&mut headers, None);
        assert_eq!(headers.len(), 3);
    }
}
