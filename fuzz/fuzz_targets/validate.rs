//! Body validation must never panic, and whatever it accepts must really meet the rules when
//! read back by an independent parser.

#![no_main]

use std::collections::HashSet;

use chat_gateway::validated_apis::{update_group_counter, PayloadFacts, REGISTRY};
use chat_gateway::coalesce::merge;
use chat_gateway::validation::{validate_object, Rejection};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|body: &[u8]| {
    for api in REGISTRY {
        match api.validate(body) {
            Ok(facts) => {
                let parsed: Value =
                    serde_json::from_slice(body).expect("an accepted body is valid JSON");
                let object = parsed.as_object().expect("an accepted body is an object");
                let group_id = object.get(api.group_member).and_then(Value::as_str);
                assert_eq!(group_id, Some(&*facts.group_id));
                assert_group_id(&facts.group_id);
                if *api == update_group_counter::API {
                    assert!(facts.update.is_some(), "an update has update facts");
                    assert_counter(object, facts, body);
                } else if let Some(keys) = object.get("GroupCounterKeys") {
                    let keys = keys.as_array().expect("GroupCounterKeys is an array");
                    assert_keys(keys.iter().map(|k| k.as_str().expect("keys are strings")));
                }
            }
            Err(rejection) => assert_message(&rejection),
        }
    }
    match validate_object(body) {
        Ok(()) => {
            let parsed: Value =
                serde_json::from_slice(body).expect("an accepted body is valid JSON");
            assert!(parsed.is_object());
        }
        Err(rejection) => assert_message(&rejection),
    }
});

fn assert_group_id(id: &str) {
    assert!(!id.is_empty() && id.len() <= 48);
    assert!(id.bytes().all(|b| (0x20..=0x7e).contains(&b)));
    assert!(!id.starts_with("@TGS#_"));
}

fn assert_counter(object: &Map<String, Value>, facts: PayloadFacts, body: &[u8]) {
    let entries = object
        .get("GroupCounter")
        .and_then(Value::as_array)
        .expect("GroupCounter is an array");
    assert_keys(entries.iter().map(|entry| {
        let entry = entry.as_object().expect("entries are objects");
        let value = entry.get("Value").expect("entries have a Value");
        // serde_json reads `-0` as a float; everything else accepted is an i64.
        assert!(value.is_i64() || value.as_f64() == Some(0.0), "{value}");
        entry
            .get("Key")
            .and_then(Value::as_str)
            .expect("entries have a string Key")
    }));
    // A mergeable update's increment holds the same entries, in order, with the same values.
    let read_back: Vec<(&str, i64)> = entries
        .iter()
        .map(|entry| {
            let key = entry["Key"].as_str().expect("a string Key");
            (key, entry["Value"].as_i64().unwrap_or(0))
        })
        .collect();
    if merge::is_mergeable(&facts) {
        let (group, inc) = merge::increment_of(facts, body).expect("a mergeable body parses");
        assert_eq!(Some(group.as_str()), object.get("GroupId").and_then(Value::as_str));
        let taken: Vec<(&str, i64)> = inc.counters.iter().map(|(k, v)| (&**k, *v)).collect();
        assert_eq!(taken, read_back);
    }
    if let Some(mode) = object.get("Mode") {
        assert!(matches!(
            mode.as_str(),
            Some("Set" | "Increase" | "Decrease")
        ));
    }
}

fn assert_keys<'a>(keys: impl Iterator<Item = &'a str>) {
    let mut seen = HashSet::new();
    for key in keys {
        assert!(!key.is_empty() && key.len() <= 128);
        assert!(seen.insert(key), "repeated key {key:?}");
    }
    assert!((1..=20).contains(&seen.len()));
}

/// Messages stay short and carry no raw control characters, whatever the input.
fn assert_message(rejection: &Rejection) {
    assert!(rejection.info.len() <= 256, "{:?}", rejection.info);
    assert!(
        !rejection.info.chars().any(char::is_control),
        "{:?}",
        rejection.info
    );
}
