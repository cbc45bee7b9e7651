//! The Chat emulator's in-memory group counters, answering the three group-counter APIs as Tencent does.
//! It parses and checks requests on its own (it plays the other side, so it shares no code with the gateway's validator).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::validated_apis;

// Only the names are shared with the gateway: the emulator checks bodies its own way.
const GET: &str = validated_apis::get_group_counter::API.name;
const UPDATE: &str = validated_apis::update_group_counter::API.name;
const DELETE: &str = validated_apis::delete_group_counter::API.name;

/// Tencent's documented limits: counters per group, bytes per key, bytes per custom group ID.
const MAX_COUNTERS: usize = 20;
const MAX_KEY_BYTES: usize = 128;
const MAX_GROUP_ID_BYTES: usize = 48;

/// Community groups (and their topics) have IDs with this prefix and no counters.
const COMMUNITY_PREFIX: &str = "@TGS#_";

/// The counters of every group that has been written to, thread-safe behind `&self`.
#[derive(Debug, Default)]
pub struct CounterStore {
    groups: Mutex<HashMap<String, Group>>,
}

/// A group's counters in the order they were created: at most 20, so a vector is the fastest map,
/// and a fixed order makes "all counters" answers reproducible.
type Group = Vec<(String, i64)>;

impl CounterStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers one call. `api` is `service/command`, e.g. `group_open_http_svc/get_group_counter`;
    /// the answer is always a Tencent envelope (sent with HTTP 200, as Tencent does).
    pub fn handle(&self, api: &str, body: &[u8]) -> Vec<u8> {
        let result = match api {
            GET => parse(body).and_then(|request| self.get(&request)),
            UPDATE => parse(body).and_then(|request| self.update(&request)),
            DELETE => parse(body).and_then(|request| self.delete(&request)),
            _ => Err(Failure::UnknownApi(api.to_owned())),
        };
        let answer = match &result {
            Ok(counters) => Answer {
                action_status: "OK",
                error_code: 0,
                error_info: String::new(),
                group_counter: counters.as_deref(),
            },
            Err(failure) => Answer {
                action_status: "FAIL",
                error_code: failure.code(),
                error_info: failure.to_string(),
                group_counter: None,
            },
        };
        // Strings and integers always serialise; the fallback only keeps this free of panics.
        serde_json::to_vec(&answer).unwrap_or_else(|_| {
            br#"{"ActionStatus":"FAIL","ErrorCode":10002,"ErrorInfo":"internal error"}"#.to_vec()
        })
    }

    /// For tests: the current value of a counter, if any.
    pub fn value(&self, group_id: &str, key: &str) -> Option<i64> {
        let groups = self.lock();
        let group = groups.get(group_id)?;
        find(group, key).map(|at| group[at].1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        // Every mutation is computed in full before it is applied, so a panic elsewhere while the
        // lock was held cannot have left a half-written group behind.
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, request: &Map<String, Value>) -> Result<Option<Vec<Counter>>, Failure> {
        let group_id = group_id(request)?;
        let keys = optional_keys(request)?;
        let groups = self.lock();
        let Some(group) = groups.get(group_id) else {
            return Ok(Some(Vec::new()));
        };
        let counters = match keys {
            None => group.iter().map(Counter::from).collect(),
            // Only the keys that exist, each once, in the order asked for.
            Some(keys) => unique(keys)
                .filter_map(|key| find(group, key).map(|at| Counter::from(&group[at])))
                .collect(),
        };
        Ok(Some(counters))
    }

    fn update(&self, request: &Map<String, Value>) -> Result<Option<Vec<Counter>>, Failure> {
        let group_id = group_id(request)?;
        let pairs = counter_pairs(request)?;
        let mode = mode(request)?;

        let mut groups = self.lock();
        let current = groups.get(group_id).map(Vec::as_slice).unwrap_or_default();
        // Work out every new value first, so that the update lands whole or not at all.
        let mut new_keys = 0;
        let mut answer = Vec::with_capacity(pairs.len());
        for (key, value) in &pairs {
            let old = match find(current, key) {
                Some(at) => current[at].1,
                None => {
                    new_keys += 1;
                    0
                }
            };
            let new = match mode {
                Mode::Set => Some(*value),
                Mode::Increase => old.checked_add(*value),
                Mode::Decrease => old.checked_sub(*value),
            }
            .ok_or_else(|| Failure::Overflow((*key).to_owned()))?;
            answer.push(Counter {
                key: (*key).to_owned(),
                value: new,
            });
        }
        if current.len() + new_keys > MAX_COUNTERS {
            return Err(Failure::TooManyCounters {
                existing: current.len(),
                new: new_keys,
            });
        }

        let group = groups.entry(group_id.to_owned()).or_default();
        for counter in &answer {
            match find(group, &counter.key) {
                Some(at) => group[at].1 = counter.value,
                None => group.push((counter.key.clone(), counter.value)),
            }
        }
        Ok(Some(answer))
    }

    fn delete(&self, request: &Map<String, Value>) -> Result<Option<Vec<Counter>>, Failure> {
        let group_id = group_id(request)?;
        let keys = optional_keys(request)?;
        let mut groups = self.lock();
        match keys {
            None => {
                groups.remove(group_id);
            }
            Some(keys) => {
                if let Some(group) = groups.get_mut(group_id) {
                    group.retain(|(key, _)| !keys.contains(&key.as_str()));
                    // An empty group holds nothing worth remembering.
                    if group.is_empty() {
                        groups.remove(group_id);
                    }
                }
            }
        }
        Ok(None)
    }
}

/// One answer body; `GroupCounter` only when the API returns counters.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Answer<'a> {
    action_status: &'static str,
    error_code: u32,
    error_info: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_counter: Option<&'a [Counter]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Counter {
    key: String,
    value: i64,
}

impl From<&(String, i64)> for Counter {
    fn from((key, value): &(String, i64)) -> Self {
        Counter {
            key: key.clone(),
            value: *value,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Set,
    Increase,
    Decrease,
}

/// Why a call failed; each maps to the ErrorCode Tencent uses for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Failure {
    #[error("the resource {0:?} is unknown")]
    UnknownApi(String),
    #[error("the request body is not a JSON object: {0}")]
    Json(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("invalid GroupId: {0}")]
    InvalidGroupId(&'static str),
    #[error("Community groups (GroupId starting with @TGS#_) do not support group counters")]
    CommunityGroup,
    #[error(
        "the group has {existing} counters and the update adds {new}; a group holds at most 20"
    )]
    TooManyCounters { existing: usize, new: usize },
    #[error("GroupCounter has more than 20 entries")]
    TooManyEntries,
    #[error("the new Value of Key {0:?} is outside the signed 64-bit range")]
    Overflow(String),
}

impl Failure {
    fn code(&self) -> u32 {
        match self {
            Failure::UnknownApi(_) => 60009,
            // Tencent has two codes for bad JSON (60003 at the REST layer, 10011 in the group
            // service); a body that does not parse never reaches the group service, so 60003.
            Failure::Json(_) => 60003,
            Failure::InvalidParameter(_) | Failure::Overflow(_) => 10004,
            Failure::InvalidGroupId(_) => 10015,
            // The request is well formed; what is refused is the operation on that group type,
            // which Tencent reports as a permission failure. Distinct from the gateway's own
            // 10004, so a test can tell which side refused.
            Failure::CommunityGroup => 10007,
            Failure::TooManyCounters { .. } | Failure::TooManyEntries => 10063,
        }
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure::InvalidParameter(message.into())
}

/// Unparsable JSON, or JSON that is not an object, is 60003 (see [`Failure::code`]).
fn parse(body: &[u8]) -> Result<Map<String, Value>, Failure> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Failure::Json("expected an object".to_owned())),
        Err(err) => Err(Failure::Json(err.to_string())),
    }
}

fn group_id(request: &Map<String, Value>) -> Result<&str, Failure> {
    let id = match request.get("GroupId") {
        None => return Err(invalid("GroupId is required")),
        Some(Value::String(id)) => id.as_str(),
        Some(_) => return Err(invalid("GroupId must be a string")),
    };
    if id.is_empty() {
        return Err(Failure::InvalidGroupId("it is empty"));
    }
    if id.len() > MAX_GROUP_ID_BYTES {
        return Err(Failure::InvalidGroupId("it is longer than 48 bytes"));
    }
    if !id.bytes().all(|byte| (0x20..=0x7e).contains(&byte)) {
        return Err(Failure::InvalidGroupId("it is not printable ASCII"));
    }
    if id.starts_with(COMMUNITY_PREFIX) {
        return Err(Failure::CommunityGroup);
    }
    Ok(id)
}

/// `GroupCounterKeys` for get and delete: absent means every counter of the group.
/// An empty array is taken at its word: no keys, so nothing is returned or deleted.
fn optional_keys(request: &Map<String, Value>) -> Result<Option<Vec<&str>>, Failure> {
    let items = match request.get("GroupCounterKeys") {
        None => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("GroupCounterKeys must be an array of strings")),
    };
    items
        .iter()
        .enumerate()
        .map(|(at, item)| {
            item.as_str()
                .ok_or_else(|| invalid(format!("GroupCounterKeys[{at}] must be a string")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn counter_pairs(request: &Map<String, Value>) -> Result<Vec<(&str, i64)>, Failure> {
    let items = match request.get("GroupCounter") {
        None => return Err(invalid("GroupCounter is required")),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("GroupCounter must be an array")),
    };
    if items.is_empty() {
        return Err(invalid("GroupCounter must not be empty"));
    }
    if items.len() > MAX_COUNTERS {
        return Err(Failure::TooManyEntries);
    }
    let mut pairs: Vec<(&str, i64)> = Vec::with_capacity(items.len());
    for (at, item) in items.iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(invalid(format!("GroupCounter[{at}] must be an object")));
        };
        let key = match item.get("Key") {
            None => return Err(invalid(format!("GroupCounter[{at}].Key is required"))),
            Some(Value::String(key)) => key.as_str(),
            Some(_) => return Err(invalid(format!("GroupCounter[{at}].Key must be a string"))),
        };
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(invalid(format!(
                "GroupCounter[{at}].Key must be 1 to 128 bytes long"
            )));
        }
        // Whether a repeated key means "last wins" or "apply twice" is not documented: refuse it
        // rather than guess.
        if pairs.iter().any(|(seen, _)| *seen == key) {
            return Err(invalid(format!(
                "GroupCounter[{at}].Key repeats an earlier key"
            )));
        }
        // as_i64 succeeds only for integer tokens in range: floats (5.0, 1e3) and larger
        // integers are parsed as other number kinds and refused here.
        let value = match item.get("Value") {
            None => return Err(invalid(format!("GroupCounter[{at}].Value is required"))),
            Some(value) => value.as_i64().ok_or_else(|| {
                invalid(format!(
                    "GroupCounter[{at}].Value must be an integer in the signed 64-bit range"
                ))
            })?,
        };
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// Tencent's Chinese page says `Mode` is required, the English one that it is optional, and
/// neither gives a default. Absent is taken as `Set`: it is idempotent, so a client that relies
/// on the wrong reading sees the least surprising result.
fn mode(request: &Map<String, Value>) -> Result<Mode, Failure> {
    match request.get("Mode") {
        None => Ok(Mode::Set),
        Some(Value::String(mode)) => match mode.as_str() {
            "Set" => Ok(Mode::Set),
            "Increase" => Ok(Mode::Increase),
            "Decrease" => Ok(Mode::Decrease),
            _ => Err(invalid("Mode must be Set, Increase or Decrease")),
        },
        Some(_) => Err(invalid("Mode must be a string")),
    }
}

fn find(group: &[(String, i64)], key: &str) -> Option<usize> {
    group.iter().position(|(existing, _)| existing == key)
}

fn unique(keys: Vec<&str>) -> impl Iterator<Item = &str> {
    let mut seen: Vec<&str> = Vec::with_capacity(keys.len());
    keys.into_iter().filter(move |key| {
        if seen.contains(key) {
            false
        } else {
            seen.push(key);
            true
        }
    })
}

#[cfg(test)]
// A failed unwrap is a failed test, which is what it should be.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn call(store: &CounterStore, api: &str, body: Value) -> Value {
        let answer = store.handle(
            &format!("group_open_http_svc/{api}"),
            &serde_json::to_vec(&body).unwrap(),
        );
        serde_json::from_slice(&answer).unwrap()
    }

    fn code(answer: &Value) -> u64 {
        answer["ErrorCode"].as_u64().unwrap()
    }

    fn assert_ok(answer: &Value) {
        assert_eq!(answer["ActionStatus"], "OK", "{answer}");
        assert_eq!(answer["ErrorCode"], 0, "{answer}");
        assert_eq!(answer["ErrorInfo"], "", "{answer}");
    }

    fn assert_fail(answer: &Value, expected: u64, mentions: &str) {
        assert_eq!(answer["ActionStatus"], "FAIL", "{answer}");
        assert_eq!(code(answer), expected, "{answer}");
        let info = answer["ErrorInfo"].as_str().unwrap();
        assert!(
            info.contains(mentions),
            "{info:?} should mention {mentions:?}"
        );
        assert!(answer.get("GroupCounter").is_none(), "{answer}");
    }

    fn update(
        store: &CounterStore,
        group: &str,
        mode: Option<&str>,
        pairs: &[(&str, i64)],
    ) -> Value {
        let mut body = json!({
            "GroupId": group,
            "GroupCounter": pairs.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
        });
        if let Some(mode) = mode {
            body["Mode"] = mode.into();
        }
        call(store, "update_group_counter", body)
    }

    fn counters(pairs: &[(&str, i64)]) -> Value {
        pairs
            .iter()
            .map(|(k, v)| json!({"Key": k, "Value": v}))
            .collect()
    }

    #[test]
    fn set_writes_and_answers_the_new_values() {
        let store = CounterStore::new();
        let answer = update(&store, "g1", Some("Set"), &[("like", 5), ("unlike", -1)]);
        assert_ok(&answer);
        assert_eq!(
            answer["GroupCounter"],
            counters(&[("like", 5), ("unlike", -1)])
        );
        assert_eq!(store.value("g1", "like"), Some(5));
        let answer = update(&store, "g1", Some("Set"), &[("like", 7)]);
        assert_eq!(answer["GroupCounter"], counters(&[("like", 7)]));
        assert_eq!(store.value("g1", "like"), Some(7));
        assert_eq!(store.value("g1", "unlike"), Some(-1));
        assert_eq!(store.value("g2", "like"), None);
    }

    #[test]
    fn increase_and_decrease_start_missing_keys_at_zero() {
        let store = CounterStore::new();
        let answer = update(&store, "g", Some("Increase"), &[("up", 3)]);
        assert_eq!(answer["GroupCounter"], counters(&[("up", 3)]));
        let answer = update(&store, "g", Some("Decrease"), &[("down", 4), ("up", 1)]);
        assert_eq!(answer["GroupCounter"], counters(&[("down", -4), ("up", 2)]));
        update(&store, "g", Some("Increase"), &[("up", 10)]);
        assert_eq!(store.value("g", "up"), Some(12));
        assert_eq!(store.value("g", "down"), Some(-4));
    }

    #[test]
    fn absent_mode_is_set() {
        let store = CounterStore::new();
        update(&store, "g", None, &[("k", 5)]);
        update(&store, "g", None, &[("k", 5)]);
        assert_eq!(store.value("g", "k"), Some(5));
    }

    #[test]
    fn overflow_fails_and_changes_nothing() {
        let store = CounterStore::new();
        update(
            &store,
            "g",
            Some("Set"),
            &[("a", 1), ("max", i64::MAX), ("min", i64::MIN)],
        );
        let answer = update(&store, "g", Some("Increase"), &[("a", 1), ("max", 1)]);
        assert_fail(&answer, 10004, "max");
        let answer = update(&store, "g", Some("Decrease"), &[("a", 1), ("min", 1)]);
        assert_fail(&answer, 10004, "min");
        let answer = update(&store, "g", Some("Decrease"), &[("new", i64::MIN)]);
        assert_fail(&answer, 10004, "new");
        assert_eq!(store.value("g", "a"), Some(1));
        assert_eq!(store.value("g", "max"), Some(i64::MAX));
        assert_eq!(store.value("g", "min"), Some(i64::MIN));
        assert_eq!(store.value("g", "new"), None);
        // Right up to the edge is fine.
        assert_ok(&update(
            &store,
            "g",
            Some("Decrease"),
            &[("max", i64::MAX), ("new", i64::MAX)],
        ));
        assert_eq!(store.value("g", "max"), Some(0));
        assert_eq!(store.value("g", "new"), Some(-i64::MAX));
    }

    #[test]
    fn failed_update_does_not_create_the_group() {
        let store = CounterStore::new();
        let answer = update(
            &store,
            "fresh",
            Some("Decrease"),
            &[("ok", 1), ("bad", i64::MIN)],
        );
        assert_fail(&answer, 10004, "bad");
        let answer = call(&store, "get_group_counter", json!({"GroupId": "fresh"}));
        assert_ok(&answer);
        assert_eq!(answer["GroupCounter"], json!([]));
    }

    #[test]
    fn at_most_twenty_counters_across_updates() {
        let store = CounterStore::new();
        let names: Vec<String> = (0..21).map(|i| format!("k{i}")).collect();
        let pairs = |range: std::ops::Range<usize>| -> Vec<(&str, i64)> {
            names[range].iter().map(|n| (n.as_str(), 1)).collect()
        };
        assert_ok(&update(&store, "g", Some("Set"), &pairs(0..12)));
        assert_ok(&update(&store, "g", Some("Increase"), &pairs(5..18)));
        // 18 exist; 3 more would make 21: nothing at all changes, not even existing keys.
        let answer = update(&store, "g", Some("Increase"), &pairs(15..21));
        assert_fail(&answer, 10063, "20");
        assert_eq!(store.value("g", "k15"), Some(1));
        assert_eq!(store.value("g", "k18"), None);
        // Exactly 20, then updates of existing keys still work at the limit.
        assert_ok(&update(&store, "g", Some("Set"), &pairs(15..20)));
        assert_ok(&update(&store, "g", Some("Increase"), &pairs(0..20)));
        assert_eq!(store.value("g", "k0"), Some(2));
        assert_fail(
            &update(&store, "g", Some("Set"), &pairs(20..21)),
            10063,
            "20",
        );
        // Deleting makes room again.
        let answer = call(
            &store,
            "delete_group_counter",
            json!({"GroupId": "g", "GroupCounterKeys": ["k0"]}),
        );
        assert_ok(&answer);
        assert_ok(&update(&store, "g", Some("Set"), &pairs(20..21)));
        // The limit is per group.
        assert_ok(&update(&store, "other", Some("Set"), &pairs(0..20)));
    }

    #[test]
    fn more_than_twenty_entries_in_one_request_is_10063() {
        let store = CounterStore::new();
        let names: Vec<String> = (0..21).map(|i| format!("k{i}")).collect();
        let pairs: Vec<(&str, i64)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        assert_fail(&update(&store, "g", Some("Set"), &pairs), 10063, "20");
        assert_eq!(store.value("g", "k0"), None);
    }

    #[test]
    fn get_returns_all_or_the_existing_requested_keys() {
        let store = CounterStore::new();
        update(&store, "g", Some("Set"), &[("b", 2), ("a", 1), ("c", 3)]);
        let all = call(&store, "get_group_counter", json!({"GroupId": "g"}));
        assert_ok(&all);
        assert_eq!(
            all["GroupCounter"],
            counters(&[("b", 2), ("a", 1), ("c", 3)])
        );
        let some = call(
            &store,
            "get_group_counter",
            json!({"GroupId": "g", "GroupCounterKeys": ["c", "missing", "a", "c"]}),
        );
        assert_ok(&some);
        assert_eq!(some["GroupCounter"], counters(&[("c", 3), ("a", 1)]));
        let none = call(
            &store,
            "get_group_counter",
            json!({"GroupId": "g", "GroupCounterKeys": []}),
        );
        assert_eq!(none["GroupCounter"], json!([]));
        let unknown = call(&store, "get_group_counter", json!({"GroupId": "nobody"}));
        assert_ok(&unknown);
        assert_eq!(unknown["GroupCounter"], json!([]));
    }

    #[test]
    fn delete_removes_all_or_the_listed_keys() {
        let store = CounterStore::new();
        update(&store, "g", Some("Set"), &[("a", 1), ("b", 2), ("c", 3)]);
        let answer = call(
            &store,
            "delete_group_counter",
            json!({"GroupId": "g", "GroupCounterKeys": ["a", "missing"]}),
        );
        assert_ok(&answer);
        assert!(answer.get("GroupCounter").is_none());
        assert_eq!(store.value("g", "a"), None);
        assert_eq!(store.value("g", "b"), Some(2));
        call(
            &store,
            "delete_group_counter",
            json!({"GroupId": "g", "GroupCounterKeys": []}),
        );
        assert_eq!(store.value("g", "b"), Some(2));
        assert_ok(&call(
            &store,
            "delete_group_counter",
            json!({"GroupId": "g"}),
        ));
        assert_eq!(store.value("g", "b"), None);
        assert_eq!(store.value("g", "c"), None);
        // Deleting what is not there is not an error (delete is idempotent).
        assert_ok(&call(
            &store,
            "delete_group_counter",
            json!({"GroupId": "g"}),
        ));
        assert_ok(&call(
            &store,
            "delete_group_counter",
            json!({"GroupId": "never"}),
        ));
        // A counter deleted and increased again starts from zero.
        update(&store, "g", Some("Increase"), &[("b", 1)]);
        assert_eq!(store.value("g", "b"), Some(1));
    }

    #[test]
    fn unknown_api_is_60009() {
        let store = CounterStore::new();
        let answer: Value =
            serde_json::from_slice(&store.handle("group_open_http_svc/nope", b"{}")).unwrap();
        assert_fail(&answer, 60009, "unknown");
        let answer: Value = serde_json::from_slice(&store.handle("", b"not json")).unwrap();
        assert_fail(&answer, 60009, "unknown");
    }

    #[test]
    fn bad_json_is_60003() {
        let store = CounterStore::new();
        for body in [
            &b""[..],
            b"{",
            b"not json",
            b"[]",
            b"\"GroupId\"",
            b"{\"GroupId\":\"g\"} x",
        ] {
            for api in [GET, UPDATE, DELETE] {
                let answer: Value = serde_json::from_slice(&store.handle(api, body)).unwrap();
                assert_fail(&answer, 60003, "JSON");
            }
        }
    }

    #[test]
    fn missing_or_wrong_fields_are_10004_naming_the_field() {
        let store = CounterStore::new();
        let cases = [
            (UPDATE, json!({}), "GroupId"),
            (GET, json!({}), "GroupId"),
            (DELETE, json!({}), "GroupId"),
            (GET, json!({"GroupId": 5}), "GroupId"),
            (GET, json!({"GroupId": null}), "GroupId"),
            (
                GET,
                json!({"GroupId": "g", "GroupCounterKeys": "a"}),
                "GroupCounterKeys",
            ),
            (
                DELETE,
                json!({"GroupId": "g", "GroupCounterKeys": [1]}),
                "GroupCounterKeys[0]",
            ),
            (UPDATE, json!({"GroupId": "g"}), "GroupCounter"),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": {}}),
                "GroupCounter",
            ),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": []}),
                "GroupCounter",
            ),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": [1]}),
                "GroupCounter[0]",
            ),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": [{"Value": 1}]}),
                "GroupCounter[0].Key",
            ),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": [{"Key": 1, "Value": 1}]}),
                "GroupCounter[0].Key",
            ),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": [{"Key": "", "Value": 1}]}),
                "GroupCounter[0].Key",
            ),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": [{"Key": "k".repeat(129), "Value": 1}]}),
                "GroupCounter[0].Key",
            ),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": [{"Key": "a", "Value": 1}, {"Key": "a", "Value": 2}]}),
                "GroupCounter[1].Key",
            ),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": [{"Key": "a"}]}),
                "GroupCounter[0].Value",
            ),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": [{"Key": "a", "Value": "1"}]}),
                "GroupCounter[0].Value",
            ),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": [{"Key": "a", "Value": null}]}),
                "GroupCounter[0].Value",
            ),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": [{"Key": "a", "Value": 5.0}]}),
                "GroupCounter[0].Value",
            ),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": [{"Key": "a", "Value": 1}], "Mode": "set"}),
                "Mode",
            ),
            (
                UPDATE,
                json!({"GroupId": "g", "GroupCounter": [{"Key": "a", "Value": 1}], "Mode": 1}),
                "Mode",
            ),
        ];
        for (api, body, field) in cases {
            let answer: Value =
                serde_json::from_slice(&store.handle(api, &serde_json::to_vec(&body).unwrap()))
                    .unwrap();
            assert_fail(&answer, 10004, field);
        }
        assert_eq!(store.value("g", "a"), None);
    }

    #[test]
    fn values_are_exact_integers() {
        let store = CounterStore::new();
        let huge = br#"{"GroupId":"g","GroupCounter":[{"Key":"a","Value":9223372036854775808}]}"#;
        let answer: Value = serde_json::from_slice(&store.handle(UPDATE, huge)).unwrap();
        assert_fail(&answer, 10004, "Value");
        let exp = br#"{"GroupId":"g","GroupCounter":[{"Key":"a","Value":1e3}]}"#;
        let answer: Value = serde_json::from_slice(&store.handle(UPDATE, exp)).unwrap();
        assert_fail(&answer, 10004, "Value");
        let max = br#"{"GroupId":"g","GroupCounter":[{"Key":"a","Value":9223372036854775807},{"Key":"b","Value":-9223372036854775808}]}"#;
        let answer: Value = serde_json::from_slice(&store.handle(UPDATE, max)).unwrap();
        assert_ok(&answer);
        assert_eq!(store.value("g", "a"), Some(i64::MAX));
        assert_eq!(store.value("g", "b"), Some(i64::MIN));
    }

    #[test]
    fn community_groups_are_refused_with_10007() {
        let store = CounterStore::new();
        for group in ["@TGS#_abc", "@TGS#_abc@TOPIC#_def"] {
            assert_fail(
                &update(&store, group, Some("Set"), &[("a", 1)]),
                10007,
                "Community",
            );
            assert_fail(
                &call(&store, "get_group_counter", json!({"GroupId": group})),
                10007,
                "Community",
            );
            assert_fail(
                &call(&store, "delete_group_counter", json!({"GroupId": group})),
                10007,
                "Community",
            );
            assert_eq!(store.value(group, "a"), None);
        }
        // Other Tencent-assigned IDs are ordinary groups.
        assert_ok(&update(&store, "@TGS#aC5SZEAEF", Some("Set"), &[("a", 1)]));
    }

    #[test]
    fn impossible_group_ids_are_10015() {
        let store = CounterStore::new();
        for group in [
            String::new(),
            "g".repeat(49),
            "tab\there".to_owned(),
            "群".to_owned(),
        ] {
            assert_fail(
                &update(&store, &group, Some("Set"), &[("a", 1)]),
                10015,
                "GroupId",
            );
        }
        assert_ok(&update(&store, &"g".repeat(48), Some("Set"), &[("a", 1)]));
    }

    #[test]
    fn unknown_fields_are_ignored_and_envelope_order_is_tencents() {
        let store = CounterStore::new();
        let body = br#"{"GroupId":"g","GroupCounter":[{"Key":"a","Value":1,"Extra":true}],"Mode":"Set","Other":1}"#;
        let answer = store.handle(UPDATE, body);
        assert_eq!(
            String::from_utf8(answer).unwrap(),
            r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[{"Key":"a","Value":1}]}"#
        );
        let answer = store.handle(DELETE, br#"{"GroupId":"g"}"#);
        assert_eq!(
            String::from_utf8(answer).unwrap(),
            r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#
        );
    }

    #[test]
    fn concurrent_increases_sum_exactly() {
        let store = Arc::new(CounterStore::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        let answer = update(
                            &store,
                            "hot",
                            Some("Increase"),
                            &[("views", 1), ("by_thread", t)],
                        );
                        assert_ok(&answer);
                        let answer = update(&store, "hot", Some("Decrease"), &[("down", 2)]);
                        assert_ok(&answer);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(store.value("hot", "views"), Some(8 * 250));
        assert_eq!(
            store.value("hot", "by_thread"),
            Some((0..8).sum::<i64>() * 250)
        );
        assert_eq!(store.value("hot", "down"), Some(-2 * 8 * 250));
    }
}
