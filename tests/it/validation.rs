//! Counter payload rules through the gateway: every kind of rejection reaches nothing upstream;
//! valid payloads are forwarded byte for byte.

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};

use crate::support::*;

const OK: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;

#[tokio::test]
async fn every_kind_of_rejection_is_answered_locally() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    let entries = |n: usize| {
        (0..n)
            .map(|i| format!(r#"{{"Key":"k{i}","Value":{i}}}"#))
            .collect::<Vec<_>>()
            .join(",")
    };
    let keys = |n: usize| {
        (0..n)
            .map(|i| format!(r#""k{i}""#))
            .collect::<Vec<_>>()
            .join(",")
    };
    let cases: Vec<(&str, String, i64, &str)> = vec![
        (
            UPDATE,
            r#"{"GroupCounter":[{"Key":"k","Value":1}]}"#.into(),
            10004,
            "GroupId",
        ),
        (
            UPDATE,
            r#"{"GroupId":7,"GroupCounter":[{"Key":"k","Value":1}]}"#.into(),
            10004,
            "GroupId",
        ),
        (
            UPDATE,
            format!(
                r#"{{"GroupId":"{}","GroupCounter":[{{"Key":"k","Value":1}}]}}"#,
                "g".repeat(49)
            ),
            10004,
            "GroupId",
        ),
        (
            UPDATE,
            r#"{"GroupId":"@TGS#_abc","GroupCounter":[{"Key":"k","Value":1}]}"#.into(),
            10004,
            "GroupId",
        ),
        (
            UPDATE,
            r#"{"GroupId":"a\u0001b","GroupCounter":[{"Key":"k","Value":1}]}"#.into(),
            10004,
            "GroupId",
        ),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupId":"h","GroupCounter":[{"Key":"k","Value":1}]}"#.into(),
            10004,
            "GroupId",
        ),
        (UPDATE, r#"{"GroupId":"g"}"#.into(), 10004, "GroupCounter"),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[]}"#.into(),
            10004,
            "GroupCounter",
        ),
        (
            UPDATE,
            format!(r#"{{"GroupId":"g","GroupCounter":[{}]}}"#, entries(21)),
            10063,
            "GroupCounter",
        ),
        (
            UPDATE,
            format!(
                r#"{{"GroupId":"g","GroupCounter":[{{"Key":"{}","Value":1}}]}}"#,
                "k".repeat(129)
            ),
            10004,
            "Key",
        ),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1},{"Key":"k","Value":2}]}"#
                .into(),
            10004,
            "Key",
        ),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Key":"j","Value":1}]}"#.into(),
            10004,
            "Key",
        ),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":5.0}]}"#.into(),
            10004,
            "Value",
        ),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1e3}]}"#.into(),
            10004,
            "Value",
        ),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":9223372036854775808}]}"#.into(),
            10004,
            "Value",
        ),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":"1"}]}"#.into(),
            10004,
            "Value",
        ),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1}],"Mode":"increase"}"#.into(),
            10004,
            "Mode",
        ),
        (
            GET,
            r#"{"GroupId":"g","GroupCounterKeys":[]}"#.into(),
            10004,
            "GroupCounterKeys",
        ),
        (
            GET,
            format!(r#"{{"GroupId":"g","GroupCounterKeys":[{}]}}"#, keys(21)),
            10063,
            "GroupCounterKeys",
        ),
        (
            DELETE,
            r#"{"GroupId":"g","GroupCounterKeys":["a","a"]}"#.into(),
            10004,
            "GroupCounterKeys",
        ),
        (
            DELETE,
            r#"{"GroupId":"g","GroupCounterKeys":[""]}"#.into(),
            10004,
            "GroupCounterKeys",
        ),
    ];
    let total = cases.len() as f64;
    for (path, body, code, field) in cases {
        let reply = post(gw.addr, path, body.clone()).await;
        reply.assert_rejection(200, code, "validation");
        let info = reply.json()["ErrorInfo"]
            .as_str()
            .expect("info")
            .to_string();
        assert!(info.contains(field), "{body}: {info:?} should name {field}");
    }
    assert_eq!(upstream.count(), 0, "the upstream received nothing");
    let metrics = scrape(gw.admin).await;
    let counted: f64 = [UPDATE, GET, DELETE]
        .iter()
        .map(|p| {
            metric(
                &metrics,
                &format!(
                    r#"chat_gateway_requests_total{{api="{}",outcome="validation"}}"#,
                    p.trim_start_matches("/v4/")
                ),
            )
        })
        .sum();
    assert_eq!(counted, total);
}

#[tokio::test]
async fn integer_edges_pass_and_are_forwarded() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    for value in ["-9223372036854775808", "9223372036854775807", "0", "-0"] {
        let body = format!(
            r#"{{"GroupId":"g","GroupCounter":[{{"Key":"k","Value":{value}}}],"Mode":"Set"}}"#
        );
        assert_eq!(
            post(gw.addr, UPDATE, body.clone()).await.error_code(),
            0,
            "{value}"
        );
        assert_eq!(
            upstream
                .requests()
                .last()
                .map(|r| r.body.clone())
                .as_deref(),
            Some(body.as_bytes())
        );
    }
}

fn valid_update() -> impl Strategy<Value = String> {
    let group = "[ -~]{1,48}".prop_filter("not a Community group", |g| !g.starts_with("@TGS#_"));
    let entries = proptest::collection::btree_map("\\PC{1,20}", any::<i64>(), 1..=20);
    let mode = proptest::option::of(prop_oneof![Just("Set"), Just("Increase"), Just("Decrease")]);
    let space = "[ \t\n]{0,2}";
    (group, entries, mode, space).prop_map(|(group, entries, mode, ws)| {
        let entries: Vec<String> = entries
            .into_iter()
            .filter(|(k, _)| k.len() <= 128)
            .map(|(k, v)| {
                format!(
                    r#"{ws}{{"Key":{},"Value":{v}}}"#,
                    serde_json::to_string(&k).expect("json")
                )
            })
            .collect();
        let mode = mode
            .map(|m| format!(r#","Mode":"{m}""#))
            .unwrap_or_default();
        format!(
            r#"{{{ws}"GroupId":{},"GroupCounter":[{}]{mode},"Unknown":{{"x":[1,2.5,null]}}}}{ws}"#,
            serde_json::to_string(&group).expect("json"),
            entries.join(",")
        )
    })
}

/// Generated valid payloads pass the gateway and reach the upstream byte for byte.
#[tokio::test]
async fn generated_valid_payloads_are_forwarded_byte_for_byte() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 100000\ngroup_burst = 100000\napp_per_second = 100000\napp_burst = 100000\n",
    ))
    .await;
    let mut runner = TestRunner::new(PropConfig {
        cases: 64,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let mut bodies = Vec::new();
    for _ in 0..64 {
        let tree = valid_update().new_tree(&mut runner).expect("value");
        bodies.push(proptest::strategy::ValueTree::current(&tree));
    }
    for (i, body) in bodies.iter().enumerate() {
        let reply = post(gw.addr, UPDATE, body.clone()).await;
        assert_eq!(reply.rejected(), None, "{body}: {:?}", reply.body);
        let seen = upstream.requests();
        assert_eq!(seen.len(), i + 1);
        assert_eq!(&seen[i].body[..], body.as_bytes());
    }
}
