//! Field rules: entry counts, key lengths, integer values, modes, group IDs, required members.

#![allow(clippy::unwrap_used)]

use super::*;
use std::borrow::Cow;

#[test]
fn typical_requests_pass() {
    let body = r#"{"GroupId":"@TGS#aQPZUPQMN","GroupCounter":[{"Key":"likes","Value":1},{"Key":"views","Value":-3}],"Mode":"Increase"}"#;
    let request = accepts(UPDATE, body);
    assert_eq!(request.group_id, "@TGS#aQPZUPQMN");
    assert!(matches!(request.group_id, Cow::Borrowed(_)));
    assert_eq!(request.mode, Some(Mode::Increase));
    let request = accepts(GET, r#"{"GroupId":"live-1","GroupCounterKeys":["likes"]}"#);
    assert_eq!(request.group_id, "live-1");
    assert_eq!(request.mode, None);
    accepts(DELETE, r#"{"GroupId":"live-1"}"#);
    accepts(GET, " \n{ \"GroupId\" : \"g\" }\r\n\t ");
}

#[test]
fn group_counter_entry_counts() {
    rejects(UPDATE, &update_with(""), 10004, "GroupCounter is empty");
    for n in [1, 2, 19, 20] {
        accepts(UPDATE, &update_with(&entries(n)));
    }
    for n in [21, 22, 40] {
        rejects(
            UPDATE,
            &update_with(&entries(n)),
            10063,
            &format!("GroupCounter has {n} entries; at most 20 are allowed"),
        );
    }
}

#[test]
fn group_counter_keys_entry_counts() {
    for api in [GET, DELETE] {
        accepts(api, r#"{"GroupId":"g1"}"#);
        rejects(api, &keys_with(""), 10004, "GroupCounterKeys is empty");
        for n in [1, 20] {
            accepts(api, &keys_with(&key_list(n)));
        }
        for n in [21, 30] {
            rejects(
                api,
                &keys_with(&key_list(n)),
                10063,
                &format!("GroupCounterKeys has {n} entries"),
            );
        }
    }
}

#[test]
fn key_lengths() {
    rejects(
        UPDATE,
        &entry_with_key(""),
        10004,
        "GroupCounter[0].Key must not be empty",
    );
    for api in [GET, DELETE] {
        rejects(
            api,
            &keys_with(r#""a","""#),
            10004,
            "GroupCounterKeys[1] must not be empty",
        );
    }
    for (key, bytes) in keys_around_limit() {
        assert_eq!(key.len(), bytes);
        let counter = entry_with_key(&key);
        let keys = keys_with(&format!("\"x\",{}", q(&key)));
        if bytes <= 128 {
            accepts(UPDATE, &counter);
            accepts(GET, &keys);
            accepts(DELETE, &keys);
        } else {
            let want = format!("is {bytes} bytes; at most 128 are allowed");
            let e = rejects(UPDATE, &counter, 10004, "GroupCounter[0].Key");
            assert!(e.info.contains(&want), "{}", e.info);
            for api in [GET, DELETE] {
                let e = rejects(api, &keys, 10004, "GroupCounterKeys[1]");
                assert!(e.info.contains(&want), "{}", e.info);
            }
        }
    }
}

#[test]
fn key_length_counts_after_unescaping() {
    // 384 bytes of escapes that decode to 128 bytes.
    let escaped = "\\u00e9".repeat(64);
    accepts(
        UPDATE,
        &update_with(&format!(r#"{{"Key":"{escaped}","Value":1}}"#)),
    );
    accepts(GET, &keys_with(&format!(r#""{escaped}""#)));
    let escaped = "\\u00e9".repeat(65);
    rejects(
        UPDATE,
        &update_with(&format!(r#"{{"Key":"{escaped}","Value":1}}"#)),
        10004,
        "GroupCounter[0].Key is 130 bytes",
    );
    // A surrogate pair decodes to one 4-byte character.
    let pairs = "\\ud83d\\ude00".repeat(32);
    accepts(GET, &keys_with(&format!(r#""{pairs}""#)));
}

#[test]
fn integer_values() {
    for token in [
        "0",
        "-0",
        "1",
        "-1",
        "42",
        "9007199254740993",
        "9223372036854775807",
        "-9223372036854775808",
    ] {
        accepts(UPDATE, &entry_with_value(token));
    }
    for token in [
        "5.0",
        "1e3",
        "1E3",
        "1e+3",
        "-1.5",
        "0.0",
        "-0.0",
        "1e400",
        "9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
        "99999999999999999999999999",
        r#""5""#,
        r#""""#,
        "true",
        "false",
        "null",
        "[]",
        "[1]",
        "{}",
        r#"{"a":1}"#,
    ] {
        let e = rejects(
            UPDATE,
            &entry_with_value(token),
            10004,
            "GroupCounter[0].Value must be an integer in the signed 64-bit range; got ",
        );
        assert!(e.info.ends_with(&echo(token)), "{}", e.info);
    }
    rejects(
        UPDATE,
        &update_with(r#"{"Key":"a","Value":1},{"Key":"b","Value":5.0}"#),
        10004,
        "GroupCounter[1].Value must be an integer in the signed 64-bit range; got 5.0",
    );
}

#[test]
fn integer_token_grammar() {
    assert_eq!(parse_i64_token("0"), Some(0));
    assert_eq!(parse_i64_token("-0"), Some(0));
    assert_eq!(parse_i64_token("-9223372036854775808"), Some(i64::MIN));
    assert_eq!(parse_i64_token("9223372036854775807"), Some(i64::MAX));
    for bad in [
        "", "-", "+1", "01", "-01", "00", "1.0", "1e3", " 1", "1 ", "--1", "0x10",
    ] {
        assert_eq!(parse_i64_token(bad), None, "{bad:?}");
    }
}

#[test]
fn modes() {
    assert_eq!(
        accepts(UPDATE, &with_mode(r#""Set""#)).mode,
        Some(Mode::Set)
    );
    assert_eq!(
        accepts(UPDATE, &with_mode(r#""Increase""#)).mode,
        Some(Mode::Increase)
    );
    assert_eq!(
        accepts(UPDATE, &with_mode(r#""Decrease""#)).mode,
        Some(Mode::Decrease)
    );
    let absent = r#"{"GroupId":"g1","GroupCounter":[{"Key":"k","Value":1}]}"#;
    assert_eq!(accepts(UPDATE, absent).mode, None);
    // Escapes are resolved before comparing.
    assert_eq!(
        accepts(UPDATE, &with_mode(r#""\u0053et""#)).mode,
        Some(Mode::Set)
    );
    for (mode, echoed) in [
        (r#""set""#, "set"),
        (r#""SET""#, "SET"),
        (r#""Multiply""#, "Multiply"),
        (r#""""#, ""),
        (r#""Set ""#, "Set "),
        (r#""increase""#, "increase"),
    ] {
        rejects(
            UPDATE,
            &with_mode(mode),
            10004,
            &format!(r#"Mode must be exactly "Set", "Increase" or "Decrease"; got "{echoed}""#),
        );
    }
    for (mode, found) in [
        ("1", "a number"),
        ("null", "null"),
        ("true", "a boolean"),
        (r#"["Set"]"#, "an array"),
        (r#"{"Mode":"Set"}"#, "an object"),
    ] {
        rejects(
            UPDATE,
            &with_mode(mode),
            10004,
            &format!("Mode must be a string: \"Set\", \"Increase\" or \"Decrease\"; got {found}"),
        );
    }
}

#[test]
fn group_ids() {
    for api in ALL {
        for id in [
            "g".to_owned(),
            " ".to_owned(),
            "@TGS#abc".to_owned(),
            "@TGS#aC5SZEAEF".to_owned(),
            "x".repeat(48),
            "~!\"#$%&'()*+,-./0123456789:;<=>?@[\\]^_`{|}".to_owned(),
        ] {
            assert_eq!(accepts(api, &with_group_id(api, &q(&id))).group_id, id);
        }
        let e = rejects(
            api,
            &with_group_id(api, &q(&"x".repeat(49))),
            10004,
            "GroupId is 49 bytes; at most 48 are allowed",
        );
        assert!(!e.info.contains("xxx"), "the id itself is not needed");
        rejects(
            api,
            &with_group_id(api, r#""""#),
            10004,
            "GroupId must not be empty",
        );
        for (id, shown) in [
            (r#""\u0001""#, r"'\u{1}' at byte 0"),
            (r#""a\tb""#, r"'\t' at byte 1"),
            (r#""é""#, "'é' at byte 0"),
            (r#""ab\u00e9""#, "'é' at byte 2"),
            (r#""\u007f""#, r"'\u{7f}' at byte 0"),
            (r#""a\nb""#, r"'\n' at byte 1"),
        ] {
            let e = rejects(
                api,
                &with_group_id(api, id),
                10004,
                "GroupId must be printable ASCII (0x20 to 0x7E); got ",
            );
            assert!(e.info.contains(shown), "{}", e.info);
            assert!(!e.info.chars().any(char::is_control), "{:?}", e.info);
        }
        for id in [r#""@TGS#_abc""#, r#""@TGS#_""#, r#""\u0040TGS#_x""#] {
            rejects(
                api,
                &with_group_id(api, id),
                10004,
                "GroupId must not start with \"@TGS#_\"",
            );
        }
        for (id, found) in [
            ("123", "a number"),
            ("null", "null"),
            ("true", "a boolean"),
            (r#"["g"]"#, "an array"),
            (r#"{"GroupId":"g"}"#, "an object"),
        ] {
            rejects(
                api,
                &with_group_id(api, id),
                10004,
                &format!("GroupId must be a string; got {found}"),
            );
        }
    }
    rejects(GET, "{}", 10004, "GroupId is required");
    rejects(
        DELETE,
        r#"{"GroupCounterKeys":["a"]}"#,
        10004,
        "GroupId is required",
    );
    rejects(
        UPDATE,
        r#"{"GroupCounter":[{"Key":"k","Value":1}]}"#,
        10004,
        "GroupId is required",
    );
    rejects(UPDATE, r#"{"groupid":"g"}"#, 10004, "GroupId is required");
}

#[test]
fn group_id_is_unescaped() {
    let request = accepts(GET, r#"{"GroupId":"a\/b\u0041"}"#);
    assert_eq!(request.group_id, "a/bA");
    assert!(matches!(request.group_id, Cow::Owned(_)));
    // 48 bytes once decoded, 288 as written.
    let body = format!(r#"{{"GroupId":"{}"}}"#, "\\u0041".repeat(48));
    assert_eq!(accepts(GET, &body).group_id, "A".repeat(48));
}

#[test]
fn group_counter_is_required_for_update_only() {
    rejects(
        UPDATE,
        r#"{"GroupId":"g"}"#,
        10004,
        "GroupCounter is required",
    );
    rejects(
        UPDATE,
        r#"{"GroupId":"g","GroupCounterKeys":["a"]}"#,
        10004,
        "GroupCounter is required",
    );
    accepts(GET, r#"{"GroupId":"g"}"#);
    accepts(DELETE, r#"{"GroupId":"g"}"#);
}
