//! Document structure: duplicate members and keys, wrong types, unknown fields, invalid JSON,
//! which problem wins, the object-shape rule for other APIs, and bounded messages.

#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn duplicate_member_names() {
    let cases = [
        (
            UPDATE,
            r#"{"GroupId":"g","GroupId":"g","GroupCounter":[{"Key":"k","Value":1}]}"#,
            r#"duplicate member "GroupId" in the request object"#,
        ),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1}],"GroupCounter":[{"Key":"k","Value":1}]}"#,
            r#"duplicate member "GroupCounter" in the request object"#,
        ),
        (
            UPDATE,
            r#"{"Mode":"Set","GroupId":"g","GroupCounter":[{"Key":"k","Value":1}],"Mode":"Set"}"#,
            r#"duplicate member "Mode" in the request object"#,
        ),
        (
            GET,
            r#"{"GroupId":"g","GroupCounterKeys":["a"],"GroupCounterKeys":["a"]}"#,
            r#"duplicate member "GroupCounterKeys" in the request object"#,
        ),
        (
            DELETE,
            r#"{"GroupId":"g","Group\u0049d":"h"}"#,
            r#"duplicate member "GroupId" in the request object"#,
        ),
        (
            GET,
            r#"{"x":1,"GroupId":"g","y":2,"x":3}"#,
            r#"duplicate member "x" in the request object"#,
        ),
        (
            GET,
            r#"{"GroupId":"g","x\u0031":1,"x1":2}"#,
            r#"duplicate member "x1" in the request object"#,
        ),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1,"Key":"k"}]}"#,
            r#"duplicate member "Key" in GroupCounter[0]"#,
        ),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"a","Value":1},{"Value":1,"Key":"k","Value":2}]}"#,
            r#"duplicate member "Value" in GroupCounter[1]"#,
        ),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1,"n":0,"n":0}]}"#,
            r#"duplicate member "n" in GroupCounter[0]"#,
        ),
        (
            GET,
            r#"{"GroupId":"g","x":{"a":1,"b":{"c":[{"d":1,"d":2}]}}}"#,
            r#"duplicate member "d" in x.b.c[0]"#,
        ),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1,"meta":[{"b":1,"b":2}]}]}"#,
            r#"duplicate member "b" in GroupCounter[0].meta[0]"#,
        ),
        (
            GET,
            r#"{"GroupId":"g","Mode":{"a":1,"a":1}}"#,
            r#"duplicate member "a" in Mode"#,
        ),
    ];
    for (api, body, message) in cases {
        rejects(api, body, 10004, message);
    }
}

#[test]
fn duplicate_member_in_wrongly_typed_field() {
    // The wrong type is the first problem met; duplicates inside still count otherwise.
    rejects(
        UPDATE,
        r#"{"GroupId":{"a":1,"a":2},"GroupCounter":[{"Key":"k","Value":1}]}"#,
        10004,
        "GroupId must be a string; got an object",
    );
    rejects(
        GET,
        r#"{"GroupId":"g","GroupCounterKeys":[{"a":1,"a":2}]}"#,
        10004,
        "GroupCounterKeys[0] must be a string; got an object",
    );
}

#[test]
fn many_unknown_members_sorted_check() {
    let mut members: Vec<String> = (0..2000).map(|i| format!(r#""m{i}":{i}"#)).collect();
    let body = format!(r#"{{"GroupId":"g",{}}}"#, members.join(","));
    accepts(GET, &body);
    members.push(r#""m1234":0"#.to_owned());
    let body = format!(r#"{{"GroupId":"g",{}}}"#, members.join(","));
    rejects(
        GET,
        &body,
        10004,
        r#"duplicate member "m1234" in the request object"#,
    );
}

#[test]
fn duplicate_keys() {
    rejects(
        UPDATE,
        &update_with(
            r#"{"Key":"likes","Value":1},{"Key":"views","Value":1},{"Key":"likes","Value":2}"#,
        ),
        10004,
        r#"GroupCounter[2].Key repeats "likes""#,
    );
    rejects(
        UPDATE,
        &update_with(r#"{"Key":"k1","Value":1},{"Key":"k\u0031","Value":1}"#),
        10004,
        r#"GroupCounter[1].Key repeats "k1""#,
    );
    // Keys are case-sensitive.
    accepts(
        UPDATE,
        &update_with(r#"{"Key":"a","Value":1},{"Key":"A","Value":1}"#),
    );
    for api in [GET, DELETE] {
        rejects(
            api,
            &keys_with(r#""likes","views","likes""#),
            10004,
            r#"GroupCounterKeys[2] repeats "likes""#,
        );
        rejects(
            api,
            &keys_with(r#""é","\u00e9""#),
            10004,
            r#"GroupCounterKeys[1] repeats "é""#,
        );
        accepts(api, &keys_with(r#""a","A","a ""#));
    }
    let mut twenty: Vec<String> = (0..19).map(|i| format!(r#""{i}""#)).collect();
    twenty.push(r#""0""#.to_owned());
    rejects(
        GET,
        &keys_with(&twenty.join(",")),
        10004,
        "GroupCounterKeys[19] repeats \"0\"",
    );
}

#[test]
fn wrong_types() {
    for (value, found) in [
        ("{}", "an object"),
        (r#""k""#, "a string"),
        ("1", "a number"),
        ("null", "null"),
        ("false", "a boolean"),
    ] {
        rejects(
            UPDATE,
            &format!(r#"{{"GroupId":"g","GroupCounter":{value}}}"#),
            10004,
            &format!("GroupCounter must be an array; got {found}"),
        );
        for api in [GET, DELETE] {
            rejects(
                api,
                &format!(r#"{{"GroupId":"g","GroupCounterKeys":{value}}}"#),
                10004,
                &format!("GroupCounterKeys must be an array; got {found}"),
            );
        }
    }
    for (value, found) in [
        (r#""k""#, "a string"),
        ("1", "a number"),
        ("null", "null"),
        ("true", "a boolean"),
        (r#"[{"Key":"k","Value":1}]"#, "an array"),
    ] {
        rejects(
            UPDATE,
            &update_with(&format!(r#"{{"Key":"a","Value":1}},{value}"#)),
            10004,
            &format!("GroupCounter[1] must be an object; got {found}"),
        );
    }
    for (value, found) in [
        ("1", "a number"),
        ("null", "null"),
        ("true", "a boolean"),
        (r#"["k"]"#, "an array"),
        (r#"{"Key":"k"}"#, "an object"),
    ] {
        rejects(
            UPDATE,
            &update_with(&format!(r#"{{"Key":{value},"Value":1}}"#)),
            10004,
            &format!("GroupCounter[0].Key must be a string; got {found}"),
        );
        for api in [GET, DELETE] {
            rejects(
                api,
                &keys_with(&format!(r#""a",{value}"#)),
                10004,
                &format!("GroupCounterKeys[1] must be a string; got {found}"),
            );
        }
    }
}

#[test]
fn entry_members_are_required() {
    rejects(
        UPDATE,
        &update_with(r#"{"Value":1}"#),
        10004,
        "GroupCounter[0].Key is required",
    );
    rejects(
        UPDATE,
        &update_with(r#"{"Key":"a","Value":1},{"Key":"b"}"#),
        10004,
        "GroupCounter[1].Value is required",
    );
    rejects(
        UPDATE,
        &update_with("{}"),
        10004,
        "GroupCounter[0].Key is required",
    );
    rejects(
        UPDATE,
        &update_with(r#"{"key":"a","value":1}"#),
        10004,
        "GroupCounter[0].Key is required",
    );
}

#[test]
fn unknown_fields_are_allowed() {
    accepts(
        UPDATE,
        r#"{"Extra":{"a":[1,2,{"b":null}]},"GroupId":"g","GroupCounter":[{"Key":"k","Value":1,"Note":"x","Nested":{"Key":5}}],"Mode":"Set","GroupCounterKeys":5,"Float":1.5e300}"#,
    );
    // A field known to one API is unknown to the others.
    accepts(GET, r#"{"GroupId":"g","Mode":5,"GroupCounter":"x"}"#);
    accepts(
        DELETE,
        r#"{"GroupId":"g","Mode":"whatever","GroupCounter":[]}"#,
    );
    // The same name in different objects is not a duplicate.
    accepts(
        GET,
        r#"{"GroupId":"g","a":{"GroupId":1,"a":{"a":2}},"b":[{"a":1},{"a":1}]}"#,
    );
}

#[test]
fn invalid_json() {
    let bodies: [&[u8]; 22] = [
        b"",
        b"   \n",
        b"\xff",
        b"{\"GroupId\":\"g\xff\"}",
        b"\xef\xbb\xbf{\"GroupId\":\"g\"}",
        b"{\"GroupId\":\"g\"",
        b"{\"GroupId\":\"g\"} x",
        b"{\"GroupId\":\"g\"},",
        b"{\"GroupId\":\"g\"}{}",
        b"{\"GroupId\":\"g\",}",
        b"{\"GroupId\":\"g\" \"x\":1}",
        b"{\"GroupId\":\"a\x01b\"}",
        b"{\"GroupId\":\"\\ud800\"}",
        b"{\"GroupId\":\"\\x41\"}",
        b"{'GroupId':'g'}",
        b"{GroupId:\"g\"}",
        b"{\"GroupId\":\"g\",\"x\":01}",
        b"{\"GroupId\":\"g\",\"x\":NaN}",
        b"{\"GroupId\":\"g\",\"x\":1e400}",
        b"{\"GroupId\":\"g\"}\x00",
        b"\x00",
        b"{\"GroupId\":\"g\",\"x\":[1,]}",
    ];
    for body in bodies {
        for api in ALL {
            rejects_bytes(api, body, 60003, "the request body");
        }
        let e = validate_object(body).unwrap_err();
        assert_eq!(
            e.kind,
            RejectKind::InvalidJson,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    for (body, found) in [
        ("[]", "an array"),
        (r#"[{"GroupId":"g"}]"#, "an array"),
        (r#""{}""#, "a string"),
        ("1", "a number"),
        ("-1.5", "a number"),
        ("null", "null"),
        ("true", "a boolean"),
    ] {
        let want = format!("the request body must be a JSON object; got {found}");
        for api in ALL {
            rejects(api, body, 60003, &want);
        }
        assert_eq!(validate_object(body.as_bytes()).unwrap_err().info, want);
    }
    rejects(GET, "", 60003, "the request body is empty");
    rejects_bytes(
        GET,
        b"{\"GroupId\":\"\xc3\"}",
        60003,
        "not valid UTF-8 (at byte 12)",
    );
    rejects(GET, "{\"GroupId\":\"g\"} x", 60003, "trailing characters");
}

#[test]
fn syntax_errors_win_over_field_problems() {
    for body in [
        r#"{"GroupId":"","GroupCounter":["#,
        r#"{"GroupId":"@TGS#_x","GroupCounter":[]} trailing"#,
        r#"{"GroupId":"g","GroupCounter":[{"Key":"","Value":5.0}],"x":tru}"#,
        r#"{"GroupId":"g","GroupId":"g","GroupCounter":[{"Key":"k","Value":1}],}"#,
    ] {
        rejects(UPDATE, body, 60003, "not valid JSON");
    }
}

#[test]
fn first_problem_in_document_order_wins() {
    rejects(
        UPDATE,
        r#"{"Mode":"x","GroupId":""}"#,
        10004,
        "Mode must be exactly",
    );
    rejects(
        UPDATE,
        r#"{"GroupId":"","Mode":"x"}"#,
        10004,
        "GroupId must not be empty",
    );
    // The size of an array is judged before its entries...
    let mut list: Vec<String> = (0..21)
        .map(|i| format!(r#"{{"Key":"k{i}","Value":1}}"#))
        .collect();
    list[3] = r#"{"Key":"","Value":5.0}"#.to_owned();
    rejects(
        UPDATE,
        &update_with(&list.join(",")),
        10063,
        "GroupCounter has 21 entries",
    );
    // ...but not before what came earlier in the document.
    let body = format!(r#"{{"GroupId":"","GroupCounter":[{}]}}"#, entries(21));
    rejects(UPDATE, &body, 10004, "GroupId must not be empty");
}

#[test]
fn validate_object_accepts_objects() {
    for body in [
        "{}",
        " {}\n",
        r#"{"a":[1,{"b":null}],"c":"\u00e9\ud83d\ude00","d":-1.5e10}"#,
        // Only the counter APIs are checked for repeated names.
        r#"{"a":1,"a":2}"#,
        r#"{"GroupId":""}"#,
    ] {
        assert_eq!(validate_object(body.as_bytes()), Ok(()), "{body}");
    }
}

#[test]
fn echoed_input_is_bounded_and_escaped() {
    let long = "m".repeat(1000);
    let e = rejects(UPDATE, &with_mode(&q(&long)), 10004, "Mode must be exactly");
    assert!(e.info.len() < 160, "{}", e.info);
    assert!(e.info.contains('…'));
    let e = rejects(UPDATE, &with_mode(r#""\u0001\n\u001b[31m""#), 10004, "Mode");
    assert!(!e.info.chars().any(char::is_control), "{:?}", e.info);
    assert!(e.info.contains(r"\u{1}\n\u{1b}[31m"), "{}", e.info);
    // Cut on a character boundary.
    let e = rejects(UPDATE, &with_mode(&q(&"é".repeat(100))), 10004, "Mode");
    assert!(
        e.info.contains(&format!("{}…", "é".repeat(32))),
        "{}",
        e.info
    );
    // A repeated 128-byte key is shown cut.
    let key = "k".repeat(128);
    let e = rejects(
        GET,
        &keys_with(&format!("{},{}", q(&key), q(&key))),
        10004,
        "GroupCounterKeys[1] repeats",
    );
    assert!(e.info.len() < 120, "{}", e.info);
    // Long unknown member names in a path are cut too.
    let name = "n".repeat(300);
    let body = format!(r#"{{"GroupId":"g","{name}":{{"{name}":{{"a":1,"a":2}}}}}}"#);
    let e = rejects(GET, &body, 10004, r#"duplicate member "a" in nnn"#);
    assert!(e.info.len() < 120, "{}", e.info);
    let value = format!("\"{}\"", "v".repeat(500));
    let e = rejects(
        UPDATE,
        &entry_with_value(&value),
        10004,
        "GroupCounter[0].Value",
    );
    assert!(e.info.len() < 160, "{}", e.info);
}

#[test]
fn echo_limits() {
    assert_eq!(echo("abc"), "abc");
    assert_eq!(echo("a\u{0}\"b"), "a\\0\\\"b");
    assert_eq!(echo(&"x".repeat(64)), "x".repeat(64));
    assert_eq!(echo(&"x".repeat(65)), format!("{}…", "x".repeat(64)));
    assert_eq!(echo(&"€".repeat(30)), format!("{}…", "€".repeat(21)));
}

#[test]
fn deep_nesting_is_bounded() {
    // 127 levels of arrays and objects, the request object included, are allowed.
    let nested = |arrays: usize| {
        format!(
            r#"{{"GroupId":"g","x":{}1{}}}"#,
            "[".repeat(arrays),
            "]".repeat(arrays)
        )
    };
    accepts(GET, &nested(126));
    assert_eq!(validate_object(nested(126).as_bytes()), Ok(()));
    rejects(GET, &nested(127), 60003, "recursion limit exceeded");
    assert!(validate_object(nested(127).as_bytes()).is_err());
    for open in ["[", "{\"a\":"] {
        let body = format!(r#"{{"GroupId":"g","x":{}"#, open.repeat(100_000));
        rejects(GET, &body, 60003, "not valid JSON");
        assert!(validate_object(body.as_bytes()).is_err());
    }
}
