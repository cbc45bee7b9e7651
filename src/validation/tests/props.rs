//! Property tests: valid requests in many spellings pass, one broken rule is named, and
//! arbitrary or mangled bytes never panic.

#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::fmt::Write as _;

// ---- property tests ----------------------------------------------------------------

/// A JSON document built for the property tests, rendered with chosen whitespace and
/// escaping so that the validator sees many spellings of the same request.
#[derive(Debug, Clone)]
enum J {
    Tok(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn s(value: &str) -> Self {
        J::Str(value.to_owned())
    }

    fn member(&mut self, name: &str) -> Option<&mut J> {
        match self {
            J::Obj(members) => members.iter_mut().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    fn remove(&mut self, name: &str) {
        if let J::Obj(members) = self {
            members.retain(|(n, _)| n != name);
        }
    }

    fn push(&mut self, name: &str, value: J) {
        if let J::Obj(members) = self {
            members.push((name.to_owned(), value));
        }
    }

    fn items(&mut self) -> &mut Vec<J> {
        match self {
            J::Arr(items) => items,
            _ => panic!("not an array"),
        }
    }
}

#[derive(Debug, Clone)]
struct Style {
    whitespace: Vec<String>,
    escape_all: bool,
}

struct Renderer<'s> {
    style: &'s Style,
    out: String,
    gap: usize,
}

impl Renderer<'_> {
    fn ws(&mut self) {
        if !self.style.whitespace.is_empty() {
            let ws = &self.style.whitespace[self.gap % self.style.whitespace.len()];
            self.out.push_str(ws);
        }
        self.gap += 1;
    }

    fn string(&mut self, value: &str) {
        if self.style.escape_all {
            self.out.push('"');
            for unit in value.encode_utf16() {
                let _ = write!(self.out, "\\u{unit:04x}");
            }
            self.out.push('"');
        } else {
            self.out.push_str(&q(value));
        }
    }

    fn value(&mut self, value: &J) {
        self.ws();
        match value {
            J::Tok(token) => self.out.push_str(token),
            J::Str(text) => self.string(text),
            J::Arr(items) => {
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.value(item);
                }
                self.ws();
                self.out.push(']');
            }
            J::Obj(members) => {
                self.out.push('{');
                for (i, (name, item)) in members.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.ws();
                    self.string(name);
                    self.ws();
                    self.out.push(':');
                    self.value(item);
                }
                self.ws();
                self.out.push('}');
            }
        }
        self.ws();
    }
}

fn render(value: &J, style: &Style) -> String {
    let mut renderer = Renderer {
        style,
        out: String::new(),
        gap: 0,
    };
    renderer.value(value);
    renderer.out
}

fn arb_style() -> impl Strategy<Value = Style> {
    (
        prop::collection::vec("[ \t\n\r]{0,3}", 0..5),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(whitespace, escape_all)| Style {
            whitespace,
            escape_all,
        })
}

fn arb_group_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{1,48}".prop_filter("community", |id| !id.starts_with(COMMUNITY_PREFIX)),
        "@TGS#[A-Za-z0-9]{1,20}",
        Just("x".repeat(48)),
    ]
}

fn arb_key() -> impl Strategy<Value = String> {
    let chars = prop::collection::vec(
        prop_oneof![
            4 => prop::char::range('a', 'z'),
            1 => Just('é'),
            1 => Just('€'),
            1 => Just('😀'),
            1 => any::<char>(),
        ],
        1..48,
    );
    (chars, any::<bool>()).prop_map(|(chars, fill)| {
        let mut key = String::new();
        for c in chars {
            if key.len() + c.len_utf8() > MAX_KEY_BYTES {
                break;
            }
            key.push(c);
        }
        // Often right at the limit.
        if fill {
            while key.len() < MAX_KEY_BYTES {
                key.push('a');
            }
        }
        key
    })
}

fn arb_value_token() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        Just(i64::MIN.to_string()),
        Just(i64::MAX.to_string()),
        Just("0".to_owned()),
        Just("-0".to_owned()),
    ]
}

fn arb_json() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|v| J::Tok(v.to_string())),
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(|v| J::Tok(format!("{v:e}"))),
        Just(J::Tok("true".into())),
        Just(J::Tok("null".into())),
        any::<String>().prop_map(J::Str),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            prop::collection::btree_map("[a-zA-Z]{1,6}", inner, 0..4)
                .prop_map(|m| J::Obj(m.into_iter().collect())),
        ]
    })
}

/// Unknown members: lower-case names never clash with the known ones.
fn arb_extras() -> impl Strategy<Value = Vec<(String, J)>> {
    prop::collection::btree_map("[a-z][a-zA-Z0-9]{0,7}", arb_json(), 0..3)
        .prop_map(|m| m.into_iter().collect())
}

#[derive(Debug, Clone)]
struct Valid {
    api: CounterPayload,
    group_id: String,
    keys: Vec<String>,
    values: Vec<String>,
    /// Get and delete: whether `GroupCounterKeys` is sent.
    send_keys: bool,
    mode: Option<Mode>,
    extras: Vec<(String, J)>,
    entry_extras: Vec<Vec<(String, J)>>,
    rotate: usize,
}

fn arb_valid() -> impl Strategy<Value = Valid> {
    (
        prop_oneof![Just(GET), Just(UPDATE), Just(DELETE)],
        arb_group_id(),
        prop::collection::btree_set(arb_key(), 1..=MAX_ENTRIES),
        prop::collection::vec(arb_value_token(), MAX_ENTRIES),
        any::<bool>(),
        prop::option::of(prop_oneof![
            Just(Mode::Set),
            Just(Mode::Increase),
            Just(Mode::Decrease)
        ]),
        arb_extras(),
        prop::collection::vec(
            prop::collection::btree_map("[a-z]{1,4}", arb_json(), 0..2),
            MAX_ENTRIES,
        ),
        0usize..8,
    )
        .prop_map(
            |(api, group_id, keys, values, send_keys, mode, extras, entry_extras, rotate)| {
                let keys: Vec<String> = keys.into_iter().collect();
                Valid {
                    api,
                    values: values.into_iter().take(keys.len()).collect(),
                    entry_extras: entry_extras
                        .into_iter()
                        .take(keys.len())
                        .map(|m| m.into_iter().collect())
                        .collect(),
                    keys,
                    group_id,
                    send_keys,
                    mode: if api == UPDATE { mode } else { None },
                    extras,
                    rotate,
                }
            },
        )
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Set => "Set",
        Mode::Increase => "Increase",
        Mode::Decrease => "Decrease",
    }
}

fn entry(key: &str, value: &str, extras: &[(String, J)], rotate: usize) -> J {
    let mut members = vec![
        ("Key".to_owned(), J::s(key)),
        ("Value".to_owned(), J::Tok(value.to_owned())),
    ];
    members.extend(extras.iter().cloned());
    let len = members.len();
    members.rotate_left(rotate % len);
    J::Obj(members)
}

impl Valid {
    fn doc(&self) -> J {
        let mut members = vec![("GroupId".to_owned(), J::s(&self.group_id))];
        if self.api == UPDATE {
            let entries = self
                .keys
                .iter()
                .zip(&self.values)
                .zip(&self.entry_extras)
                .map(|((key, value), extras)| entry(key, value, extras, self.rotate))
                .collect();
            members.push(("GroupCounter".to_owned(), J::Arr(entries)));
            if let Some(mode) = self.mode {
                members.push(("Mode".to_owned(), J::s(mode_name(mode))));
            }
        } else if self.send_keys {
            let keys = self.keys.iter().map(|k| J::s(k)).collect();
            members.push(("GroupCounterKeys".to_owned(), J::Arr(keys)));
        }
        members.extend(self.extras.iter().cloned());
        let len = members.len();
        members.rotate_left(self.rotate % len);
        J::Obj(members)
    }

    fn list_name(&self) -> &'static str {
        if self.api == UPDATE {
            "GroupCounter"
        } else {
            "GroupCounterKeys"
        }
    }

    /// Where key `i` sits, as messages name it.
    fn key_path(&self, i: usize) -> String {
        if self.api == UPDATE {
            format!("GroupCounter[{i}].Key")
        } else {
            format!("GroupCounterKeys[{i}]")
        }
    }

    fn list<'d>(&self, doc: &'d mut J) -> &'d mut Vec<J> {
        doc.member(self.list_name()).unwrap().items()
    }

    /// Key `i`, as a value in the document.
    fn key_slot<'d>(&self, doc: &'d mut J, i: usize) -> &'d mut J {
        let item = &mut self.list(doc)[i];
        if self.api == UPDATE {
            item.member("Key").unwrap()
        } else {
            item
        }
    }

    /// A fresh valid item for the list, with a key not used yet.
    fn fresh_item(&self, n: usize) -> J {
        let mut key = format!("pad-{n}");
        while self.keys.contains(&key) {
            key.push('+');
        }
        if self.api == UPDATE {
            entry(&key, "1", &[], 0)
        } else {
            J::Str(key)
        }
    }
}

/// One rule broken on purpose.
#[derive(Debug, Clone)]
enum Break {
    NoGroupId,
    GroupIdValue(String),
    GroupIdType(String),
    NoList,
    EmptyList,
    TooMany(usize),
    ListType(String),
    ItemType(usize, String),
    KeyEmpty(usize),
    KeyTooLong(usize, String),
    KeyType(usize, String),
    RepeatKey(usize, usize),
    NoKeyMember(usize),
    NoValueMember(usize),
    ValueToken(usize, String),
    RepeatEntryMember(usize, bool),
    ModeValue(String),
    ModeType(String),
    RepeatTopMember(usize),
    NestedDuplicate(bool),
    Trailing(String),
    Truncate,
    WrapInArray,
}

fn arb_break() -> impl Strategy<Value = Break> {
    let wrong_type = prop_oneof![
        Just("1".to_owned()),
        Just("-2.5".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
    ];
    let not_string = wrong_type.clone();
    // An entry must be an object; "{}" is one (an empty entry breaks another rule).
    let not_object = prop_oneof![
        Just("1".to_owned()),
        Just("null".to_owned()),
        Just("false".to_owned()),
        Just("[]".to_owned()),
        Just("\"k\"".to_owned()),
    ];
    let bad_group_id = prop_oneof![
        Just(String::new()),
        "[ -~]{49,60}",
        "[ -~]{0,10}[\u{0}-\u{1f}\u{7f}é€][ -~]{0,10}",
        "[ -~]{0,20}".prop_map(|s| format!("@TGS#_{s}")),
    ];
    let long_key = prop::collection::vec(
        prop_oneof![Just('a'), Just('é'), Just('€'), Just('😀')],
        1..20,
    )
    .prop_map(|chars| {
        let tail: String = chars.into_iter().collect();
        let mut key = "k".repeat(MAX_KEY_BYTES + 1 - tail.len().min(MAX_KEY_BYTES));
        key.push_str(&tail);
        key
    });
    let bad_token = prop_oneof![
        Just("5.0".to_owned()),
        Just("1e3".to_owned()),
        Just("-0.0".to_owned()),
        Just("9223372036854775808".to_owned()),
        Just("-9223372036854775809".to_owned()),
        Just("\"5\"".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("[1]".to_owned()),
        Just("{\"v\":1}".to_owned()),
        (1u64..1000).prop_map(|v| format!("{v}.5")),
    ];
    let bad_mode = prop_oneof![
        Just("set".to_owned()),
        Just("SET".to_owned()),
        Just("Multiply".to_owned()),
        Just(String::new()),
        Just("Set ".to_owned()),
        "[a-z]{1,10}",
    ];
    let index = 0usize..MAX_ENTRIES;
    prop_oneof![
        Just(Break::NoGroupId),
        bad_group_id.prop_map(Break::GroupIdValue),
        not_string.clone().prop_map(Break::GroupIdType),
        Just(Break::NoList),
        Just(Break::EmptyList),
        (MAX_ENTRIES + 1..=MAX_ENTRIES + 10).prop_map(Break::TooMany),
        prop_oneof![
            Just("{}".to_owned()),
            Just("\"k\"".to_owned()),
            Just("7".to_owned())
        ]
        .prop_map(Break::ListType),
        (index.clone(), not_object).prop_map(|(i, t)| Break::ItemType(i, t)),
        index.clone().prop_map(Break::KeyEmpty),
        (index.clone(), long_key).prop_map(|(i, k)| Break::KeyTooLong(i, k)),
        (index.clone(), not_string.clone()).prop_map(|(i, t)| Break::KeyType(i, t)),
        (index.clone(), index.clone()).prop_map(|(i, j)| Break::RepeatKey(i, j)),
        index.clone().prop_map(Break::NoKeyMember),
        index.clone().prop_map(Break::NoValueMember),
        (index.clone(), bad_token).prop_map(|(i, t)| Break::ValueToken(i, t)),
        (index.clone(), any::<bool>()).prop_map(|(i, k)| Break::RepeatEntryMember(i, k)),
        bad_mode.prop_map(Break::ModeValue),
        not_string.prop_map(Break::ModeType),
        (0usize..4).prop_map(Break::RepeatTopMember),
        any::<bool>().prop_map(Break::NestedDuplicate),
        prop_oneof![
            Just("x".to_owned()),
            Just("{}".to_owned()),
            Just(",".to_owned()),
            Just("\"".to_owned())
        ]
        .prop_map(Break::Trailing),
        Just(Break::Truncate),
        Just(Break::WrapInArray),
    ]
}

/// Applies `how` to a valid request. Returns the body and the expected (code, text in
/// the message), or None when the break does not apply to this request.
fn broken(valid: &Valid, how: &Break, style: &Style) -> Option<(String, u32, String)> {
    let update = valid.api == UPDATE;
    let has_list = update || valid.send_keys;
    let n = valid.keys.len();
    let mut doc = valid.doc();
    let list = valid.list_name();
    let (code, needle) = match how.clone() {
        Break::NoGroupId => {
            doc.remove("GroupId");
            (10004, "GroupId is required".to_owned())
        }
        Break::GroupIdValue(id) => {
            let needle = if id.is_empty() {
                "GroupId must not be empty".to_owned()
            } else if id.len() > MAX_GROUP_ID_BYTES {
                format!("GroupId is {} bytes; at most 48 are allowed", id.len())
            } else if id.chars().any(|c| !(' '..='~').contains(&c)) {
                "GroupId must be printable ASCII".to_owned()
            } else {
                "GroupId must not start with \"@TGS#_\"".to_owned()
            };
            *doc.member("GroupId")? = J::Str(id);
            (10004, needle)
        }
        Break::GroupIdType(token) => {
            *doc.member("GroupId")? = J::Tok(token);
            (10004, "GroupId must be a string; got ".to_owned())
        }
        Break::NoList if update => {
            doc.remove(list);
            (10004, "GroupCounter is required".to_owned())
        }
        Break::EmptyList if has_list => {
            valid.list(&mut doc).clear();
            (10004, format!("{list} is empty"))
        }
        Break::TooMany(total) if has_list => {
            let items = valid.list(&mut doc);
            for extra in n..total {
                items.push(valid.fresh_item(extra));
            }
            (
                10063,
                format!("{list} has {total} entries; at most 20 are allowed"),
            )
        }
        Break::ListType(token) if has_list => {
            *doc.member(list)? = J::Tok(token);
            (10004, format!("{list} must be an array; got "))
        }
        Break::ItemType(i, token) if update && i < n => {
            valid.list(&mut doc)[i] = J::Tok(token);
            (10004, format!("GroupCounter[{i}] must be an object; got "))
        }
        Break::KeyEmpty(i) if has_list && i < n => {
            *valid.key_slot(&mut doc, i) = J::s("");
            (10004, format!("{} must not be empty", valid.key_path(i)))
        }
        Break::KeyTooLong(i, key) if has_list && i < n => {
            let bytes = key.len();
            *valid.key_slot(&mut doc, i) = J::Str(key);
            (
                10004,
                format!(
                    "{} is {bytes} bytes; at most 128 are allowed",
                    valid.key_path(i)
                ),
            )
        }
        Break::KeyType(i, token) if has_list && i < n => {
            *valid.key_slot(&mut doc, i) = J::Tok(token);
            (
                10004,
                format!("{} must be a string; got ", valid.key_path(i)),
            )
        }
        Break::RepeatKey(i, j) if has_list => {
            let (first, second) = if n == 1 {
                let item = valid.list(&mut doc)[0].clone();
                valid.list(&mut doc).push(item);
                (0, 1)
            } else {
                let (i, j) = (i % n, j % n);
                let (first, second) = if i == j { (i, (i + 1) % n) } else { (i, j) };
                (first.min(second), first.max(second))
            };
            let key = valid.keys[first].clone();
            *valid.key_slot(&mut doc, second) = J::s(&key);
            (
                10004,
                format!("{} repeats \"{}\"", valid.key_path(second), echo(&key)),
            )
        }
        Break::NoKeyMember(i) if update && i < n => {
            valid.list(&mut doc)[i].remove("Key");
            (10004, format!("GroupCounter[{i}].Key is required"))
        }
        Break::NoValueMember(i) if update && i < n => {
            valid.list(&mut doc)[i].remove("Value");
            (10004, format!("GroupCounter[{i}].Value is required"))
        }
        Break::ValueToken(i, token) if update && i < n => {
            *valid.list(&mut doc)[i].member("Value")? = J::Tok(token.clone());
            (
                10004,
                format!(
                    "GroupCounter[{i}].Value must be an integer in the signed 64-bit range; got {}",
                    echo(&token)
                ),
            )
        }
        Break::RepeatEntryMember(i, key) if update && i < n => {
            let name = if key { "Key" } else { "Value" };
            let item = &mut valid.list(&mut doc)[i];
            let copy = item.member(name)?.clone();
            item.push(name, copy);
            (
                10004,
                format!("duplicate member \"{name}\" in GroupCounter[{i}]"),
            )
        }
        Break::ModeValue(mode) if update => {
            doc.remove("Mode");
            let shown = echo(&mode);
            doc.push("Mode", J::Str(mode));
            (
                10004,
                format!(
                    "Mode must be exactly \"Set\", \"Increase\" or \"Decrease\"; got \"{shown}\""
                ),
            )
        }
        Break::ModeType(token) if update => {
            doc.remove("Mode");
            doc.push("Mode", J::Tok(token));
            (10004, "Mode must be a string".to_owned())
        }
        Break::RepeatTopMember(which) => {
            let J::Obj(members) = &doc else { return None };
            let (name, value) = members[which % members.len()].clone();
            doc.push(&name, value);
            (
                10004,
                format!("duplicate member \"{}\" in the request object", echo(&name)),
            )
        }
        Break::NestedDuplicate(in_entry) => {
            let twice = J::Obj(vec![
                ("dup".to_owned(), J::Tok("1".into())),
                ("dup".to_owned(), J::Tok("2".into())),
            ]);
            let nested = J::Arr(vec![J::Tok("0".into()), twice]);
            if in_entry && update {
                valid.list(&mut doc)[n - 1].push("zzNested", nested);
                (
                    10004,
                    format!(
                        "duplicate member \"dup\" in GroupCounter[{}].zzNested[1]",
                        n - 1
                    ),
                )
            } else {
                doc.push("zzNested", nested);
                (10004, "duplicate member \"dup\" in zzNested[1]".to_owned())
            }
        }
        Break::Trailing(tail) => {
            let body = format!("{}{tail}", render(&doc, style));
            return Some((body, 60003, "not valid JSON".to_owned()));
        }
        Break::Truncate => {
            let body = render(&doc, style);
            let body = body.trim_end();
            let body = &body[..body.len() - 1];
            return Some((body.to_owned(), 60003, "not valid JSON".to_owned()));
        }
        Break::WrapInArray => {
            let body = format!("[{}]", render(&doc, style));
            return Some((
                body,
                60003,
                "must be a JSON object; got an array".to_owned(),
            ));
        }
        _ => return None,
    };
    Some((render(&doc, style), code, needle))
}

proptest! {
    // Failures are turned into table tests above rather than saved seed files.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn valid_requests_pass(valid in arb_valid(), style in arb_style()) {
        let body = render(&valid.doc(), &style);
        match validate_counter(valid.api, body.as_bytes()) {
            Ok(request) => {
                prop_assert_eq!(&*request.group_id, valid.group_id.as_str());
                prop_assert_eq!(request.mode, valid.mode);
                let extras = !valid.extras.is_empty()
                    || (valid.api == UPDATE && valid.entry_extras.iter().any(|e| !e.is_empty()));
                prop_assert_eq!(request.plain, !extras);
            }
            Err(e) => prop_assert!(false, "{:?} rejected {}: {}", valid.api, body, e.info),
        }
        prop_assert_eq!(validate_object(body.as_bytes()), Ok(()));
    }

    #[test]
    fn one_broken_rule_is_named(
        valid in arb_valid(),
        how in arb_break(),
        style in arb_style(),
    ) {
        let Some((body, code, needle)) = broken(&valid, &how, &style) else {
            return Ok(());
        };
        let result = validate_counter(valid.api, body.as_bytes());
        match result {
            Ok(request) => prop_assert!(false, "{:?} accepted {} ({:?})", valid.api, body, request),
            Err(e) => {
                prop_assert_eq!(e.kind.error_code(), code, "{}: {}", body, e.info);
                prop_assert!(e.info.contains(&needle), "{}: {:?} lacks {:?}", body, e.info, needle);
                prop_assert!(!e.info.chars().any(char::is_control), "{:?}", e.info);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        for api in ALL {
            let _ = validate_counter(api, &body);
        }
        let _ = validate_object(&body);
    }

    #[test]
    fn mangled_requests_never_panic_and_passing_ones_parse(
        valid in arb_valid(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut body = render(&valid.doc(), &Style { whitespace: vec![], escape_all: false })
            .into_bytes();
        for (at, byte, op) in edits {
            let i = at.index(body.len() + 1);
            match op {
                0 if i < body.len() => body[i] = byte,
                1 if i < body.len() => { body.remove(i); }
                _ => body.insert(i, byte),
            }
        }
        for api in ALL {
            if let Ok(request) = validate_counter(api, &body) {
                let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
                prop_assert_eq!(parsed["GroupId"].as_str(), Some(&*request.group_id));
                if api == UPDATE {
                    prop_assert!(parsed["GroupCounter"].is_array());
                }
            }
        }
        if validate_object(&body).is_ok() {
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
            prop_assert!(parsed.is_object());
        }
    }
}

#[test]
fn keys_around_limit_are_unique_in_set() {
    // Guards the table above: every sample is distinct, so the list tests stay meaningful.
    let samples: BTreeSet<String> = keys_around_limit().into_iter().map(|(k, _)| k).collect();
    assert_eq!(samples.len(), keys_around_limit().len());
}
