//! The admin listener: `/healthz`, `/readyz`, `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::credentials::unix_now;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::stack::Assembly;

#[derive(Clone)]
pub struct Admin {
    pub metrics: Metrics,
    pub lifecycle: Arc<Lifecycle>,
    /// The gateway in force: readiness asks its credentials, `/metrics` its limiter.
    pub running: tokio::sync::watch::Receiver<Arc<Assembly>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin")
    }
}

impl Admin {
    pub fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.lifecycle.is_draining() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if !(self.running.borrow().parts.credentials).can_sign(unix_now()) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no valid UserSig\n")
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            "/metrics" => {
                // Read at scrape time: the map changes with every new GroupId.
                let tracked = self.running.borrow().parts.limiter.tracked_groups();
                self.metrics.tracked_groups(tracked);
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz, /readyz or /metrics\n",
            ),
        }
    }

    pub async fn serve<B>(
        self: Arc<Self>,
        req: Request<B>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        Ok(self.handle(&req))
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::Config;
    use crate::usersig::SecretKey;

    fn ready(admin: &Admin) -> StatusCode {
        let req = Request::get("/readyz").body(()).expect("request");
        admin.handle(&req).status()
    }

    /// Readiness asks the credentials of the assembly in force, not of the first one.
    #[tokio::test]
    async fn readiness_asks_the_credentials_in_force() {
        let dir = tempfile::tempdir().expect("dir");
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "k\n").expect("write");
        let text = |identifier: &str| {
            format!(
                "[chat]\nsdkappid = 1400000000\nregion = \"singapore\"\nidentifier = \"{identifier}\"\n\
                 secret_key_file = \"{}\"\n",
                key_file.display()
            )
        };
        let config = Config::parse(&text("first")).expect("valid");
        let first = Assembly::new(&config, SecretKey::new("k").expect("key")).expect("assembly");
        let next = first
            .reloaded(Config::parse(&text("next")).expect("valid"))
            .expect("reloaded");
        // The first identity's sig, dated 1970, has long expired.
        first.parts.credentials.renew(1);
        let (published, running) = tokio::sync::watch::channel(Arc::new(first.clone()));
        let admin = Admin {
            metrics: first.parts.metrics.clone(),
            lifecycle: first.parts.lifecycle.clone(),
            running,
        };
        assert_eq!(ready(&admin), StatusCode::SERVICE_UNAVAILABLE);
        published.send_replace(Arc::new(next));
        assert_eq!(ready(&admin), StatusCode::OK);
    }
}
