//! Request body checks done before anything is forwarded to Tencent: the group counter
//! payload rules, and the "one well-formed JSON object" rule for every other API.

mod counter;
pub mod members;
mod shape;
mod walk;

#[cfg(test)]
mod tests;

pub use counter::{
    validate_counter, CounterPayload, CounterRequest, Mode, MAX_ENTRIES, MAX_GROUP_ID_BYTES,
    MAX_KEY_BYTES,
};
pub use shape::validate_object;

/// Why a body was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// Not JSON, or not a JSON object.
    InvalidJson,
    /// A field breaks a rule.
    InvalidParameter,
    /// More than 20 entries in `GroupCounter` or `GroupCounterKeys`.
    TooManyEntries,
}

impl RejectKind {
    /// The Tencent `ErrorCode` the gateway answers with.
    pub fn error_code(self) -> u32 {
        match self {
            Self::InvalidJson => 60003,
            Self::InvalidParameter => 10004,
            Self::TooManyEntries => 10063,
        }
    }

    /// The value of the `X-Chat-Gateway-Rejected` header (and of the `outcome` label).
    pub fn reason(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidParameter | Self::TooManyEntries => "validation",
        }
    }
}

/// A rejected body: the kind decides the code, `info` is the `ErrorInfo` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{info}")]
pub struct Rejection {
    pub kind: RejectKind,
    pub info: String,
}

impl Rejection {
    /// 60003 `invalid_json`: not JSON, or not a JSON object.
    pub fn invalid_json(info: String) -> Self {
        Self {
            kind: RejectKind::InvalidJson,
            info,
        }
    }

    /// 10004 `validation`: a member breaks a rule; `info` names it and the rule.
    pub fn invalid_parameter(info: String) -> Self {
        Self {
            kind: RejectKind::InvalidParameter,
            info,
        }
    }
}

fn body_text(body: &[u8]) -> Result<&str, Rejection> {
    if body
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Err(Rejection::invalid_json(
            "the request body is empty; a JSON object is required".to_owned(),
        ));
    }
    std::str::from_utf8(body).map_err(|e| {
        Rejection::invalid_json(format!(
            "the request body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })
}

fn syntax_error(e: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    match e.classify() {
        // serde_json's syntax messages name the problem and position, never the input.
        Category::Syntax | Category::Eof => {
            Rejection::invalid_json(format!("the request body is not valid JSON: {e}"))
        }
        // Data errors can quote input; none is expected here, so keep the text generic.
        Category::Data | Category::Io => {
            Rejection::invalid_json("the request body is not valid JSON".to_owned())
        }
    }
}

fn not_an_object(found: &str) -> Rejection {
    Rejection::invalid_json(format!(
        "the request body must be a JSON object; got {found}"
    ))
}
