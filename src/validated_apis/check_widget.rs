//! `test_only_svc/check_widget`: an API that exists only in this crate's tests. It is validated
//! but never coalesced, and it is all here plus one line in [`super::REGISTRY`]: the proof that
//! adding such an API takes no more. Its group is `GroupId`; `Size` (optional) is 1 to 100.

use super::{Coalescing, PayloadFacts, ValidatedApi};
use crate::validation::members::{group_id, json_object, optional_integer};
use crate::validation::Rejection;

pub const API: ValidatedApi = ValidatedApi {
    name: "test_only_svc/check_widget",
    path: "/v4/test_only_svc/check_widget",
    group_member: "GroupId",
    validate,
    idempotent: |_| true,
    coalesce: Coalescing::Never,
    allowed_by_default: false,
};

fn validate(body: &[u8]) -> Result<PayloadFacts, Rejection> {
    let object = json_object(body)?;
    let group = group_id(&object, "GroupId")?;
    optional_integer(&object, "Size", 1..=100)?;
    Ok(PayloadFacts {
        group_id: group.into(),
        update: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tokio::net::TcpListener;

    use crate::emulator::{self, Emulator};
    use crate::usersig::SecretKey;

    async fn post(addr: std::net::SocketAddr, body: &'static str) -> (u16, serde_json::Value) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = http::Request::post(format!("http://{addr}{}", super::API.path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let answer = client.request(req).await.unwrap();
        let status = answer.status().as_u16();
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// Through sockets: the gateway validates it, limits it by its group, and forwards it.
    #[tokio::test]
    async fn a_validated_api_from_one_module_is_checked_limited_and_forwarded() {
        let key = SecretKey::new("test-only-key").unwrap();
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        let emulator = Emulator::new(1400000000, "administrator", key.clone());
        let (_stop_upstream, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(emulator::serve(upstream, emulator.clone(), None, async {
            let _ = stopped.await;
        }));
        let config = crate::config::Config::parse(&format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_delay = "0s"
[chat]
sdkappid = 1400000000
identifier = "administrator"
endpoint = "http://{upstream_addr}"
secret_key_file = "/not/read/in/tests"
[rate_limit]
group_per_second = 1
group_burst = 1
[apis]
allow = ["{}"]
"#,
            super::API.name
        ))
        .unwrap();
        let callers = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = callers.local_addr().unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::run(
            config,
            key,
            crate::Listeners { callers, admin },
            async {
                let _ = stopped.await;
            },
        ));
        let refused = [
            (r#"{"Size":3}"#, "GroupId is required"),
            (
                r#"{"GroupId":"g","Size":0}"#,
                "Size must be an integer from 1 to 100; got 0",
            ),
        ];
        for (body, says) in refused {
            let (status, answer) = post(addr, body).await;
            assert_eq!(status, 200);
            assert_eq!(answer["ErrorCode"], 10004, "{body}");
            assert_eq!(answer["ErrorInfo"], says);
        }
        assert_eq!(emulator.requests(), 0, "refused bodies are never forwarded");
        let (_, answer) = post(addr, r#"{"GroupId":"g","Size":3}"#).await;
        assert_ne!(answer["ErrorCode"], 10006, "{answer}");
        assert_eq!(emulator.requests(), 1, "a valid body is forwarded");
        let (_, answer) = post(addr, r#"{"GroupId":"g"}"#).await;
        assert_eq!(answer["ErrorCode"], 10006, "its group's limit: {answer}");
        let (_, answer) = post(addr, r#"{"GroupId":"other"}"#).await;
        assert_ne!(answer["ErrorCode"], 10006, "another group's own budget");
        assert_eq!(emulator.requests(), 2);
        drop(Arc::clone(&emulator));
    }
}
