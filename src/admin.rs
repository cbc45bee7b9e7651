//! The admin listener: `/healthz`, `/readyz`, `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::credentials::unix_now;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

/// What the admin endpoint asks of the gateway in force (it changes with each reload).
pub trait InForce: Send + Sync {
    /// Whether its credentials can sign a UserSig at `now` (Unix seconds).
    fn can_sign(&self, now: u64) -> bool;
    /// How many groups its limiter tracks.
    fn tracked_groups(&self) -> usize;
}

#[derive(Clone)]
pub struct Admin {
    pub metrics: Metrics,
    pub lifecycle: Arc<Lifecycle>,
    /// The gateway in force: readiness asks its credentials, `/metrics` its limiter.
    pub running: Arc<dyn InForce>,
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
                } else if !self.running.can_sign(unix_now()) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no valid UserSig\n")
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            "/metrics" => {
                // Read at scrape time: the map changes with every new GroupId.
                let tracked = self.running.tracked_groups();
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

    use std::sync::atomic::{AtomicBool, Ordering};

    /// A gateway whose credentials can sign while `signs` says so.
    struct Fake {
        signs: AtomicBool,
    }

    impl InForce for Fake {
        fn can_sign(&self, _now: u64) -> bool {
            self.signs.load(Ordering::Relaxed)
        }
        fn tracked_groups(&self) -> usize {
            7
        }
    }

    fn get(admin: &Admin, path: &str) -> Response<Full<Bytes>> {
        let req = Request::get(path).body(()).expect("request");
        admin.handle(&req)
    }

    /// Readiness and `/metrics` ask the gateway in force at each request.
    #[test]
    fn readiness_and_metrics_ask_the_gateway_in_force() {
        let fake = Arc::new(Fake {
            signs: AtomicBool::new(false),
        });
        let admin = Admin {
            metrics: Metrics::new(),
            lifecycle: Arc::new(Lifecycle::new()),
            running: fake.clone(),
        };
        assert_eq!(
            get(&admin, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        fake.signs.store(true, Ordering::Relaxed);
        assert_eq!(get(&admin, "/readyz").status(), StatusCode::OK);
        assert_eq!(get(&admin, "/metrics").status(), StatusCode::OK);
        let metrics = String::from_utf8_lossy(&admin.metrics.render()).into_owned();
        assert!(
            metrics.contains("chat_gateway_rate_limit_tracked_groups 7"),
            "{metrics}"
        );
        admin.lifecycle.start_draining();
        assert_eq!(
            get(&admin, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
