//! Tests of the body checks: shared helpers here; field rules, document structure and
//! property tests in their own files.

#![allow(clippy::unwrap_used)]

mod fields;
mod props;
mod structure;

use super::counter::COMMUNITY_PREFIX;
use super::walk::{echo, parse_i64_token};
use super::*;

const UPDATE: CounterPayload = CounterPayload::Update;
const GET: CounterPayload = CounterPayload::Get;
const DELETE: CounterPayload = CounterPayload::Delete;
const ALL: [CounterPayload; 3] = [GET, UPDATE, DELETE];

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[track_caller]
fn accepts(api: CounterPayload, body: &str) -> CounterRequest<'_> {
    match validate_counter(api, body.as_bytes()) {
        Ok(request) => request,
        Err(e) => panic!(
            "{api:?} rejected {body:?}: {} {}",
            e.kind.error_code(),
            e.info
        ),
    }
}

#[track_caller]
fn rejects(api: CounterPayload, body: &str, code: u32, needle: &str) -> Rejection {
    rejects_bytes(api, body.as_bytes(), code, needle)
}

#[track_caller]
fn rejects_bytes(api: CounterPayload, body: &[u8], code: u32, needle: &str) -> Rejection {
    match validate_counter(api, body) {
        Ok(request) => panic!(
            "{api:?} accepted {:?} as {request:?}; wanted {code} naming {needle:?}",
            String::from_utf8_lossy(body)
        ),
        Err(e) => {
            assert_eq!(
                e.kind.error_code(),
                code,
                "{api:?} {:?}: {}",
                String::from_utf8_lossy(body),
                e.info
            );
            assert!(
                e.info.contains(needle),
                "{api:?} {:?}: {:?} does not contain {needle:?}",
                String::from_utf8_lossy(body),
                e.info
            );
            e
        }
    }
}

/// An update body with the given GroupCounter entries (JSON text, comma-separated).
fn update_with(entries: &str) -> String {
    format!(r#"{{"GroupId":"g1","GroupCounter":[{entries}],"Mode":"Set"}}"#)
}

fn entries(n: usize) -> String {
    (0..n)
        .map(|i| format!(r#"{{"Key":"k{i}","Value":{i}}}"#))
        .collect::<Vec<_>>()
        .join(",")
}

fn entry_with_key(key: &str) -> String {
    update_with(&format!(r#"{{"Key":{},"Value":1}}"#, q(key)))
}

fn entry_with_value(token: &str) -> String {
    update_with(&format!(r#"{{"Key":"k","Value":{token}}}"#))
}

fn keys_with(keys: &str) -> String {
    format!(r#"{{"GroupId":"g1","GroupCounterKeys":[{keys}]}}"#)
}

fn key_list(n: usize) -> String {
    (0..n)
        .map(|i| format!(r#""k{i}""#))
        .collect::<Vec<_>>()
        .join(",")
}

fn with_group_id(api: CounterPayload, group_id: &str) -> String {
    match api {
        CounterPayload::Update => {
            format!(r#"{{"GroupId":{group_id},"GroupCounter":[{{"Key":"k","Value":1}}]}}"#)
        }
        CounterPayload::Get | CounterPayload::Delete => format!(r#"{{"GroupId":{group_id}}}"#),
    }
}

fn with_mode(mode: &str) -> String {
    format!(r#"{{"GroupId":"g1","GroupCounter":[{{"Key":"k","Value":1}}],"Mode":{mode}}}"#)
}

/// (key, bytes it has) around the 128-byte limit, multibyte ones included.
fn keys_around_limit() -> Vec<(String, usize)> {
    vec![
        ("a".into(), 1),
        ("k".repeat(128), 128),
        ("k".repeat(129), 129),
        ("é".repeat(64), 128),
        (format!("{}a", "é".repeat(64)), 129),
        // 65 characters, 130 bytes: the limit is in bytes, not characters.
        ("é".repeat(65), 130),
        (format!("{}é", "€".repeat(42)), 128),
        (format!("{}€", "€".repeat(42)), 129),
        ("😀".repeat(32), 128),
        (format!("{}a", "😀".repeat(32)), 129),
        (format!("{}é", "😀".repeat(31)), 126),
    ]
}

#[test]
fn codes_and_reasons() {
    assert_eq!(RejectKind::InvalidJson.error_code(), 60003);
    assert_eq!(RejectKind::InvalidParameter.error_code(), 10004);
    assert_eq!(RejectKind::TooManyEntries.error_code(), 10063);
    assert_eq!(RejectKind::InvalidJson.reason(), "invalid_json");
    assert_eq!(RejectKind::InvalidParameter.reason(), "validation");
    assert_eq!(RejectKind::TooManyEntries.reason(), "validation");
    let rejection = Rejection {
        kind: RejectKind::InvalidParameter,
        info: "GroupId is required".into(),
    };
    assert_eq!(rejection.to_string(), "GroupId is required");
}
