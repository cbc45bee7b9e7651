//! Building blocks for an API's own payload rules (one module in `src/validated_apis/`): the body as a
//! JSON object, and member rules several APIs share, each failing with an `ErrorInfo` that
//! names the member and the rule.

use std::ops::RangeInclusive;

use serde_json::{Map, Value};

use super::walk::echo;
use super::{validate_object, Rejection, MAX_GROUP_ID_BYTES};

/// The body as a JSON object, held to the grammar every body is held to ([`validate_object`]).
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, Rejection> {
    validate_object(body)?;
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        // validate_object accepted it as one object, so it parses as one.
        _ => Err(Rejection::invalid_json(
            "the request body must be a JSON object".to_owned(),
        )),
    }
}

/// A required group id: a string of printable ASCII, 1 to 48 bytes.
pub fn group_id<'a>(object: &'a Map<String, Value>, member: &str) -> Result<&'a str, Rejection> {
    let value = match object.get(member) {
        None => {
            return Err(Rejection::invalid_parameter(format!(
                "{member} is required"
            )))
        }
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(Rejection::invalid_parameter(format!(
                "{member} must be a string; got {}",
                kind(other)
            )))
        }
    };
    if value.is_empty() || value.len() > MAX_GROUP_ID_BYTES {
        return Err(Rejection::invalid_parameter(format!(
            "{member} must be 1 to {MAX_GROUP_ID_BYTES} bytes; got {}",
            value.len()
        )));
    }
    if let Some((at, c)) = value
        .char_indices()
        .find(|&(_, c)| !(' '..='~').contains(&c))
    {
        return Err(Rejection::invalid_parameter(format!(
            "{member} must be printable ASCII (0x20 to 0x7E); got '{}' at byte {at}",
            c.escape_debug()
        )));
    }
    Ok(value)
}

/// An optional integer member within `range`.
pub fn optional_integer(
    object: &Map<String, Value>,
    member: &str,
    range: RangeInclusive<i64>,
) -> Result<Option<i64>, Rejection> {
    let Some(value) = object.get(member) else {
        return Ok(None);
    };
    match value.as_i64() {
        Some(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(Rejection::invalid_parameter(format!(
            "{member} must be an integer from {} to {}; got {}",
            range.start(),
            range.end(),
            match value {
                Value::Number(n) => echo(&n.to_string()),
                other => kind(other).to_owned(),
            }
        ))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::validation::RejectKind;

    #[test]
    fn group_ids_and_integers_name_the_member_and_the_rule() {
        let object = json_object(br#"{"G":"ok","N":5,"S":"x","E":"","F":1.5}"#).unwrap();
        assert_eq!(group_id(&object, "G").unwrap(), "ok");
        for (member, says) in [
            ("Missing", "Missing is required"),
            ("N", "N must be a string; got a number"),
            ("E", "E must be 1 to 48 bytes; got 0"),
        ] {
            let e = group_id(&object, member).unwrap_err();
            assert_eq!(e.kind, RejectKind::InvalidParameter);
            assert_eq!(e.info, says);
        }
        assert_eq!(optional_integer(&object, "N", 1..=9).unwrap(), Some(5));
        assert_eq!(optional_integer(&object, "Absent", 1..=9).unwrap(), None);
        for (member, says) in [
            ("N", "N must be an integer from 6 to 9; got 5"),
            ("S", "S must be an integer from 6 to 9; got a string"),
            ("F", "F must be an integer from 6 to 9; got 1.5"),
        ] {
            assert_eq!(
                optional_integer(&object, member, 6..=9).unwrap_err().info,
                says
            );
        }
        assert_eq!(
            json_object(b"[1]").unwrap_err().kind,
            RejectKind::InvalidJson
        );
    }
}
