//! The merge itself, without I/O: which increments may share one `update_group_counter` call,
//! the per-key sums of a batch, the body sent for it and the answer each caller gets back.

use std::borrow::Cow;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::validated_apis::{CounterUpdate, PayloadFacts};
pub use crate::validation::Mode;

/// Tencent's most counters per call (and per group).
pub const MAX_KEYS: usize = 20;

/// An increment's `(Key, Value)` entries: the usual one or two, and keys up to 24 bytes, sit
/// inline.
pub type Counters = SmallVec<[(CompactString, i64); 2]>;

/// One caller's increment: its Mode and its (Key, Value) entries, keys distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Increment {
    pub mode: Mode,
    pub counters: Counters,
}

impl Increment {
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.counters.iter().map(|(k, _)| k.as_str())
    }
}

/// Why an increment cannot join a batch; it then goes to a batch of its own after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the batch holds the other Mode")]
    Mode,
    #[error("the batch would hold more than {MAX_KEYS} keys")]
    Keys,
    #[error("a key's sum would leave the signed 64-bit range")]
    Overflow,
    /// A key's Values in one batch share one sign, so that the sum of any subset of its
    /// callers (after some gave up waiting) stays within the range too.
    #[error("a key's Values would mix signs")]
    Sign,
    #[error("the batch has its most callers")]
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct KeySum {
    key: CompactString,
    sum: i64,
    negative: bool,
    positive: bool,
}

/// A batch's sums: one Mode, at most [`MAX_KEYS`] keys in first-seen order, at most
/// `max_callers` callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    mode: Mode,
    sums: Vec<KeySum>,
    callers: usize,
    max_callers: usize,
}

impl Merge {
    pub fn new(mode: Mode, max_callers: usize) -> Self {
        Merge {
            mode,
            sums: Vec::new(),
            callers: 0,
            max_callers: max_callers.max(1),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// This merge with `other`'s cap on callers (for a batch rebuilt after removals).
    pub fn with_max_callers_of(mut self, other: &Merge) -> Merge {
        self.max_callers = other.max_callers;
        self
    }

    pub fn callers(&self) -> usize {
        self.callers
    }

    pub fn is_full(&self) -> bool {
        self.callers >= self.max_callers
    }

    /// Adds `inc` to the batch, or changes nothing and says why not.
    pub fn try_join(&mut self, inc: &Increment) -> Result<(), Refused> {
        if inc.mode != self.mode {
            return Err(Refused::Mode);
        }
        if self.is_full() {
            return Err(Refused::Full);
        }
        let mut new_keys = 0;
        for (key, value) in &inc.counters {
            match self.sums.iter().find(|s| s.key == *key) {
                Some(s) => {
                    if (*value < 0 && s.positive) || (*value > 0 && s.negative) {
                        return Err(Refused::Sign);
                    }
                    s.sum.checked_add(*value).ok_or(Refused::Overflow)?;
                }
                None => new_keys += 1,
            }
        }
        if self.sums.len() + new_keys > MAX_KEYS {
            return Err(Refused::Keys);
        }
        for (key, value) in &inc.counters {
            let at = match self.sums.iter().position(|s| s.key == *key) {
                Some(at) => at,
                None => {
                    self.sums.push(KeySum {
                        key: key.clone(),
                        sum: 0,
                        negative: false,
                        positive: false,
                    });
                    self.sums.len() - 1
                }
            };
            let s = &mut self.sums[at];
            // Checked above: cannot fail.
            s.sum = s.sum.saturating_add(*value);
            s.negative |= *value < 0;
            s.positive |= *value > 0;
        }
        self.callers += 1;
        Ok(())
    }

    /// The per-key sums, in first-seen order.
    pub fn sums(&self) -> impl Iterator<Item = (&str, i64)> {
        self.sums.iter().map(|s| (s.key.as_str(), s.sum))
    }

    /// The `update_group_counter` body of this batch.
    pub fn body(&self, group: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Entry<'a> {
            #[serde(rename = "Key")]
            key: &'a str,
            #[serde(rename = "Value")]
            value: i64,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "GroupId")]
            group_id: &'a str,
            #[serde(rename = "GroupCounter")]
            group_counter: Vec<Entry<'a>>,
            #[serde(rename = "Mode")]
            mode: &'static str,
        }
        let body = Body {
            group_id: group,
            group_counter: self
                .sums
                .iter()
                .map(|s| Entry {
                    key: &s.key,
                    value: s.sum,
                })
                .collect(),
            mode: self.mode.as_str(),
        };
        // A struct of strings and integers always serialises.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// Splits increments, in arrival order, into batches as the gateway would: each joins the
/// first open batch that takes it, else starts a new one.
pub fn batch_all(incs: &[Increment], max_callers: usize) -> Vec<Merge> {
    let mut batches: Vec<Merge> = Vec::new();
    for inc in incs {
        if !batches.iter_mut().any(|b| b.try_join(inc).is_ok()) {
            let mut merge = Merge::new(inc.mode, max_callers);
            if merge.try_join(inc).is_ok() {
                batches.push(merge);
            }
        }
    }
    batches
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody<'a> {
    #[serde(rename = "GroupId", borrow)]
    group_id: Cow<'a, str>,
    #[serde(rename = "GroupCounter", borrow)]
    group_counter: Vec<Entry<'a>>,
    #[serde(rename = "Mode", borrow)]
    mode: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry<'a> {
    #[serde(rename = "Key", borrow)]
    key: Cow<'a, str>,
    #[serde(rename = "Value")]
    value: i64,
}

/// The increment of a body validation found mergeable: a plain update (only `GroupId`,
/// `GroupCounter` entries of `Key` and `Value`, and `Mode`) with `Mode` `Increase` or
/// `Decrease`. Anything else keeps its facts and is sent alone, as it came. Validation keeps no
/// keys or values (every update would pay for them); only a caller that waits for a batch
/// reads them here, from the same body.
pub fn increment_of(facts: PayloadFacts, body: &[u8]) -> Result<(String, Increment), PayloadFacts> {
    if !is_mergeable(&facts) {
        return Err(facts);
    }
    match parse_body(body) {
        Some((_, inc)) => Ok((facts.group_id.into_string(), inc)),
        // Validation accepted this body as a plain increment, so it parses; were it not to, the
        // request would still go out alone, unchanged.
        None => Err(facts),
    }
}

/// Whether validation found a mergeable increment (see [`increment_of`]), without taking it.
pub fn is_mergeable(facts: &PayloadFacts) -> bool {
    matches!(
        &facts.update,
        Some(CounterUpdate {
            mode: Some(Mode::Increase | Mode::Decrease),
            plain: true,
        })
    )
}

/// The GroupId and increment of a mergeable `update_group_counter` body: exactly `GroupId`,
/// `GroupCounter` (1 to 20 entries of `Key` and `Value`, keys distinct) and `Mode` `Increase`
/// or `Decrease`. Anything else (`Set`, no Mode, other members, duplicate keys) is `None`.
pub fn parse_increment(body: &[u8]) -> Option<(String, Increment)> {
    parse_body(body).map(|(group, inc)| (group.into_owned(), inc))
}

fn parse_body(body: &[u8]) -> Option<(Cow<'_, str>, Increment)> {
    let parsed: UpdateBody = serde_json::from_slice(body).ok()?;
    let mode = match &*parsed.mode {
        "Increase" => Mode::Increase,
        "Decrease" => Mode::Decrease,
        _ => return None,
    };
    let n = parsed.group_counter.len();
    if n == 0 || n > MAX_KEYS {
        return None;
    }
    let counters: Counters = parsed
        .group_counter
        .into_iter()
        .map(|e| (CompactString::from(e.key), e.value))
        .collect();
    for (i, (key, _)) in counters.iter().enumerate() {
        if counters[..i].iter().any(|(k, _)| k == key) {
            return None;
        }
    }
    Some((parsed.group_id, Increment { mode, counters }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBody {
    /// Validation took the group (the facts hold it); here it need only be there.
    #[serde(rename = "GroupId")]
    _group_id: serde::de::IgnoredAny,
    #[serde(rename = "GroupCounterKeys", default)]
    keys: Option<Vec<String>>,
}

/// What makes two `get_group_counter` calls the same: the group and its keys as listed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadKey {
    pub keys: Option<Vec<String>>,
}

/// The keys of a `get_group_counter` body made only of `GroupId` and `GroupCounterKeys`;
/// anything else is `None` (sent alone).
pub fn parse_read(body: &[u8]) -> Option<ReadKey> {
    let parsed: GetBody = serde_json::from_slice(body).ok()?;
    Some(ReadKey { keys: parsed.keys })
}

#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "GroupCounter", default)]
    group_counter: Vec<Entry2>,
}

#[derive(Deserialize)]
struct Entry2 {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value")]
    value: i64,
}

/// The latest values of Tencent's OK answer to a merged call, by key.
pub fn answer_values(body: &[u8]) -> Option<Vec<(String, i64)>> {
    let answer: Answer = serde_json::from_slice(body).ok()?;
    Some(
        answer
            .group_counter
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect(),
    )
}

/// One caller's OK answer: its own keys with their latest values. `None` when Tencent's answer
/// lacks one of them.
pub fn caller_answer<'k>(
    values: &[(String, i64)],
    keys: impl Iterator<Item = &'k str>,
) -> Option<Vec<u8>> {
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(rename = "Key")]
        key: &'a str,
        #[serde(rename = "Value")]
        value: i64,
    }
    #[derive(Serialize)]
    struct Ok<'a> {
        #[serde(rename = "ActionStatus")]
        action_status: &'static str,
        #[serde(rename = "ErrorCode")]
        error_code: u32,
        #[serde(rename = "ErrorInfo")]
        error_info: &'static str,
        #[serde(rename = "GroupCounter")]
        group_counter: Vec<Out<'a>>,
    }
    let mut own = Vec::with_capacity(keys.size_hint().0);
    for key in keys {
        let value = values.iter().find(|(k, _)| k == key)?.1;
        own.push(Out { key, value });
    }
    serde_json::to_vec(&Ok {
        action_status: "OK",
        error_code: 0,
        error_info: "",
        group_counter: own,
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What validation finds mergeable is what the body's own parse finds mergeable, and the
    /// increment taken with the facts is the body's.
    #[test]
    fn validated_facts_give_the_same_increment_as_the_body() {
        let validate = crate::validated_apis::update_group_counter::API.validate;
        for body in [
            r#"{"GroupId":"g","GroupCounter":[{"Key":"likes","Value":3}],"Mode":"Increase"}"#,
            r#"{"Mode":"Decrease","GroupCounter":[{"Value":-2,"Key":"a"},{"Key":"b","Value":9223372036854775807}],"GroupId":"g\u0031"}"#,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"a-key-longer-than-twenty-four-bytes","Value":1}],"Mode":"Increase"}"#,
        ] {
            let facts = validate(body.as_bytes()).expect("valid");
            assert!(is_mergeable(&facts), "{body}");
            let from_facts = increment_of(facts, body.as_bytes()).expect("mergeable");
            let parsed = parse_increment(body.as_bytes()).expect("parses");
            assert_eq!(from_facts.0, parsed.0, "{body}");
            assert_eq!(from_facts.1, parsed.1, "{body}");
        }
        let (group, inc) = parse_increment(
            br#"{"Mode":"Decrease","GroupCounter":[{"Value":-2,"Key":"a"},{"Key":"b\u0031","Value":7}],"GroupId":"g\u0031"}"#,
        )
        .expect("parses");
        assert_eq!(group, "g1");
        assert_eq!(inc, self::inc(Mode::Decrease, &[("a", -2), ("b1", 7)]));
        for body in [
            r#"{"GroupId":"g","GroupCounter":[{"Key":"likes","Value":3}],"Mode":"Set"}"#,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"likes","Value":3}]}"#,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"likes","Value":3}],"Mode":"Increase","X":1}"#,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"likes","Value":3,"X":1}],"Mode":"Increase"}"#,
        ] {
            let facts = validate(body.as_bytes()).expect("valid");
            assert!(!is_mergeable(&facts), "{body}");
            assert!(increment_of(facts, body.as_bytes()).is_err(), "{body}");
            assert!(parse_increment(body.as_bytes()).is_none(), "{body}");
        }
    }
    use proptest::prelude::*;

    fn inc(mode: Mode, counters: &[(&str, i64)]) -> Increment {
        Increment {
            mode,
            counters: counters.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
        }
    }

    #[test]
    fn only_strict_increase_and_decrease_bodies_merge() {
        let (group, i) = parse_increment(
            br#"{"GroupId":"g","GroupCounter":[{"Key":"likes","Value":2}],"Mode":"Increase"}"#,
        )
        .expect("mergeable");
        assert_eq!(group, "g");
        assert_eq!(i, inc(Mode::Increase, &[("likes", 2)]));
        for body in [
            &br#"{"GroupId":"g","GroupCounter":[{"Key":"a","Value":1}],"Mode":"Set"}"#[..],
            br#"{"GroupId":"g","GroupCounter":[{"Key":"a","Value":1}]}"#,
            br#"{"GroupId":"g","GroupCounter":[{"Key":"a","Value":1}],"Mode":"Increase","X":1}"#,
            br#"{"GroupId":"g","GroupCounter":[{"Key":"a","Value":1,"X":2}],"Mode":"Increase"}"#,
            br#"{"GroupId":"g","GroupCounter":[{"Key":"a","Value":1},{"Key":"a","Value":1}],"Mode":"Increase"}"#,
            br#"{"GroupId":"g","GroupCounter":[],"Mode":"Increase"}"#,
            br#"{"GroupId":"g","GroupCounter":[{"Key":"a","Value":1.5}],"Mode":"Increase"}"#,
        ] {
            assert!(
                parse_increment(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn joins_are_refused_for_mode_keys_overflow_sign_and_size() {
        let mut m = Merge::new(Mode::Increase, 3);
        m.try_join(&inc(Mode::Increase, &[("a", i64::MAX - 1)]))
            .expect("first");
        assert_eq!(
            m.try_join(&inc(Mode::Decrease, &[("a", 1)])),
            Err(Refused::Mode)
        );
        assert_eq!(
            m.try_join(&inc(Mode::Increase, &[("a", 2)])),
            Err(Refused::Overflow)
        );
        assert_eq!(
            m.try_join(&inc(Mode::Increase, &[("a", -2)])),
            Err(Refused::Sign)
        );
        let many: Counters = (0..20).map(|i| (format!("k{i}").into(), 1)).collect();
        assert_eq!(
            m.try_join(&Increment {
                mode: Mode::Increase,
                counters: many
            }),
            Err(Refused::Keys)
        );
        m.try_join(&inc(Mode::Increase, &[("a", 1)])).expect("fits");
        m.try_join(&inc(Mode::Increase, &[("b", 1)])).expect("fits");
        assert_eq!(
            m.try_join(&inc(Mode::Increase, &[("c", 1)])),
            Err(Refused::Full)
        );
        assert_eq!(
            m.sums().collect::<Vec<_>>(),
            [("a", i64::MAX), ("b", 1)],
            "refused joins changed nothing"
        );
        let body: serde_json::Value = serde_json::from_slice(&m.body("g")).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"GroupId":"g","GroupCounter":[{"Key":"a","Value":i64::MAX},{"Key":"b","Value":1}],"Mode":"Increase"})
        );
    }

    #[test]
    fn each_caller_gets_its_own_keys() {
        let values = answer_values(
            br#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[{"Key":"a","Value":7},{"Key":"b","Value":3}]}"#,
        )
        .expect("values");
        let out = caller_answer(&values, ["b"].into_iter()).expect("answer");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[{"Key":"b","Value":3}]}"#
        );
        assert!(caller_answer(&values, ["c"].into_iter()).is_none());
    }

    fn increment() -> impl Strategy<Value = Increment> {
        let value = prop_oneof![
            -5i64..5,
            Just(i64::MAX),
            Just(i64::MIN),
            Just(i64::MAX / 2),
            Just(i64::MIN / 2),
        ];
        (
            any::<bool>(),
            proptest::collection::btree_map(0u8..30, value, 1..=20),
        )
            .prop_map(|(inc, counters)| Increment {
                mode: if inc { Mode::Increase } else { Mode::Decrease },
                counters: counters
                    .into_iter()
                    .map(|(k, v)| (format!("k{k}").into(), v))
                    .collect(),
            })
    }

    /// A JSON string for `text`, every character escaped as `\uXXXX` when `escape` says so.
    fn json_string(text: &str, escape: bool) -> String {
        if escape {
            let units: String = text.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
            format!("\"{units}\"")
        } else {
            serde_json::to_string(text).unwrap_or_default()
        }
    }

    /// `inc` as an `update_group_counter` body for group `g`: members in any order, keys and
    /// the Mode escaped or not, entries' members either way round, whitespace or none.
    fn render(inc: &Increment, order: usize, escape: u32, spaced: bool) -> String {
        let sep = if spaced { " , " } else { "," };
        let colon = if spaced { " : " } else { ":" };
        let entries: Vec<String> = inc
            .counters
            .iter()
            .enumerate()
            .map(|(i, (key, value))| {
                let key = format!(
                    "\"Key\"{colon}{}",
                    json_string(key, escape & (1 << (i % 30)) != 0)
                );
                let value = format!("\"Value\"{colon}{value}");
                if i % 2 == order % 2 {
                    format!("{{{key}{sep}{value}}}")
                } else {
                    format!("{{{value}{sep}{key}}}")
                }
            })
            .collect();
        let mut members = [
            format!("\"GroupId\"{colon}{}", json_string("g", escape & 1 != 0)),
            format!("\"GroupCounter\"{colon}[{}]", entries.join(sep)),
            format!(
                "\"Mode\"{colon}{}",
                json_string(inc.mode.as_str(), escape & 2 != 0)
            ),
        ];
        members.rotate_left(order % 3);
        if order % 2 == 1 {
            members.swap(0, 1);
        }
        format!("{{{}}}", members.join(sep))
    }

    proptest! {
        /// Whatever the body's member order, escapes and whitespace, the increment taken with
        /// validation's facts is exactly the one the body holds.
        #[test]
        fn a_validated_increment_is_the_one_its_body_holds(
            inc in increment(),
            order in 0usize..6,
            escape in any::<u32>(),
            spaced in any::<bool>(),
        ) {
            let body = render(&inc, order, escape, spaced);
            let validate = crate::validated_apis::update_group_counter::API.validate;
            let facts = validate(body.as_bytes());
            prop_assert!(facts.is_ok(), "{}", body);
            let Ok(facts) = facts else { return Ok(()) };
            prop_assert!(is_mergeable(&facts), "{}", body);
            let taken = increment_of(facts, body.as_bytes());
            prop_assert_eq!(taken, Ok(("g".to_owned(), inc.clone())), "{}", body);
            // One member more and it is neither mergeable nor an increment.
            let extra = format!("{{\"Note\":1,{}", &body[1..]);
            let facts = validate(extra.as_bytes());
            prop_assert!(facts.as_ref().is_ok_and(|f| !is_mergeable(f)), "{}", extra);
            prop_assert_eq!(parse_increment(extra.as_bytes()), None, "{}", extra);
        }

        /// Any sequence of increments, any batch size: every increment lands in exactly one
        /// batch, the per-(Mode, key) sums over all batches equal those of the increments, no
        /// batch holds more than 20 keys, mixes Modes, or leaves the 64-bit range.
        #[test]
        fn batching_preserves_sums(incs in proptest::collection::vec(increment(), 0..60), max_callers in 1usize..10) {
            use std::collections::HashMap;
            let batches = batch_all(&incs, max_callers);
            prop_assert_eq!(batches.iter().map(Merge::callers).sum::<usize>(), incs.len());
            let mut want: HashMap<(bool, String), i128> = HashMap::new();
            for i in &incs {
                for (k, v) in &i.counters {
                    *want.entry((i.mode == Mode::Increase, k.to_string())).or_default() += i128::from(*v);
                }
            }
            let mut got: HashMap<(bool, String), i128> = HashMap::new();
            for b in &batches {
                prop_assert!(b.sums().count() <= MAX_KEYS);
                prop_assert!(b.callers() <= max_callers);
                for (k, v) in b.sums() {
                    *got.entry((b.mode() == Mode::Increase, k.to_string())).or_default() += i128::from(v);
                }
                let body: serde_json::Value = serde_json::from_slice(&b.body("g")).expect("json");
                prop_assert_eq!(body["GroupCounter"].as_array().map(Vec::len), Some(b.sums().count()));
            }
            want.retain(|_, v| *v != 0);
            got.retain(|_, v| *v != 0);
            prop_assert_eq!(want, got);
        }

        /// Removing any callers of a batch (they gave up waiting) leaves sums that fit: the
        /// same-sign rule makes every subset's sum lie between zero and the whole sum.
        #[test]
        fn any_subset_of_a_batch_fits(incs in proptest::collection::vec(increment(), 1..30), keep in proptest::collection::vec(any::<bool>(), 30)) {
            for b in batch_members(&incs, 1000) {
                let mut m = Merge::new(b[0].mode, 1000);
                for (i, inc) in b.iter().enumerate() {
                    if keep[i % keep.len()] {
                        prop_assert_eq!(m.try_join(inc), Ok(()));
                    }
                }
            }
        }
    }

    /// Like [`batch_all`], keeping each batch's members.
    fn batch_members(incs: &[Increment], max_callers: usize) -> Vec<Vec<Increment>> {
        let mut batches: Vec<(Merge, Vec<Increment>)> = Vec::new();
        for inc in incs {
            match batches
                .iter_mut()
                .find(|(m, _)| m.clone().try_join(inc).is_ok())
            {
                Some((m, members)) => {
                    let _ = m.try_join(inc);
                    members.push(inc.clone());
                }
                None => {
                    let mut m = Merge::new(inc.mode, max_callers);
                    if m.try_join(inc).is_ok() {
                        batches.push((m, vec![inc.clone()]));
                    }
                }
            }
        }
        batches.into_iter().map(|(_, members)| members).collect()
    }
}
