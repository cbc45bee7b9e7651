//! Request body checks done before anything is forwarded to Tencent: the payload rules of the
//! three group counter APIs, and the "one well-formed JSON object" rule for every other API.
//!
//! The body is parsed once, in a single streaming pass over the caller's bytes: strings are
//! borrowed where they contain no escapes and `Value` is judged on its raw number token, so the
//! happy path does not allocate. A rule broken inside the document is remembered and the pass
//! goes on, so that a body that is not valid JSON is always reported as such (60003) rather
//! than as the first field problem met before the syntax error.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Most entries in `GroupCounter` or `GroupCounterKeys` (a group holds at most 20 counters).
pub const MAX_ENTRIES: usize = 20;
/// Longest counter key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 128;
/// Longest group ID, in bytes.
pub const MAX_GROUP_ID_BYTES: usize = 48;
/// Community group IDs start with this, and Community groups have no counters.
const COMMUNITY_PREFIX: &str = "@TGS#_";
/// Caller input echoed in a message is cut to about this many bytes.
const ECHO_BYTES: usize = 64;

const GET_API: &str = "group_open_http_svc/get_group_counter";
const UPDATE_API: &str = "group_open_http_svc/update_group_counter";
const DELETE_API: &str = "group_open_http_svc/delete_group_counter";

/// The group counter APIs, whose payloads are checked field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CounterApi {
    Get,
    Update,
    Delete,
}

impl CounterApi {
    /// `"group_open_http_svc/get_group_counter"` etc. -> `Some(..)`; anything else `None`.
    pub fn from_api(service_command: &str) -> Option<Self> {
        match service_command {
            GET_API => Some(Self::Get),
            UPDATE_API => Some(Self::Update),
            DELETE_API => Some(Self::Delete),
            _ => None,
        }
    }

    /// The API's `service/command` name, as in the request path.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => GET_API,
            Self::Update => UPDATE_API,
            Self::Delete => DELETE_API,
        }
    }
}

/// `Mode` of `update_group_counter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Set,
    Increase,
    Decrease,
}

/// What the gateway needs downstream of validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterRequest<'a> {
    /// The group ID with JSON escapes resolved (borrowed from the body when it had none).
    pub group_id: Cow<'a, str>,
    /// Only for Update; `None` when absent.
    pub mode: Option<Mode>,
}

impl CounterRequest<'_> {
    /// False for Update with Increase, Decrease or no Mode (not provably idempotent); true
    /// otherwise. Without a Mode, Tencent's documentation gives no default, so a retry of such
    /// a request is not known to be safe.
    pub fn is_idempotent(&self, api: CounterApi) -> bool {
        match api {
            CounterApi::Update => self.mode == Some(Mode::Set),
            CounterApi::Get | CounterApi::Delete => true,
        }
    }
}

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
    fn invalid_json(info: String) -> Self {
        Self {
            kind: RejectKind::InvalidJson,
            info,
        }
    }
}

/// Checks the body of a group counter API call. On success the returned request borrows from
/// `body`; the body itself is meant to be forwarded unchanged.
pub fn validate_counter(api: CounterApi, body: &[u8]) -> Result<CounterRequest<'_>, Rejection> {
    let text = body_text(body)?;
    let mut ctx = Ctx::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let request = Field {
        ctx: &mut ctx,
        path: Path::Root,
        handler: Top { api },
    }
    .deserialize(&mut de)
    .and_then(|request| de.end().map(|()| request))
    .map_err(syntax_error)?;
    match (ctx.rejection, request) {
        (Some(rejection), _) => Err(rejection),
        (None, Some(request)) => Ok(request),
        // Top only yields nothing after recording why; kept as an answer rather than a panic.
        (None, None) => Err(Rejection {
            kind: RejectKind::InvalidParameter,
            info: "GroupId is required".to_owned(),
        }),
    }
}

/// For every other API: the body must be one well-formed JSON object (trailing whitespace ok),
/// else InvalidJson.
pub fn validate_object(body: &[u8]) -> Result<(), Rejection> {
    let text = body_text(body)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let found = de
        .deserialize_any(Shape)
        .and_then(|found| de.end().map(|()| found))
        .map_err(syntax_error)?;
    match found {
        None => Ok(()),
        Some(found) => Err(not_an_object(found)),
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

/// Caller input as it may appear in a message: escaped, cut to about [`ECHO_BYTES`] bytes on a
/// character boundary.
fn echo(input: &str) -> String {
    let mut out = String::with_capacity(input.len().min(ECHO_BYTES) + 4);
    for c in input.chars() {
        let start = out.len();
        out.extend(c.escape_debug());
        if out.len() > ECHO_BYTES {
            out.truncate(start);
            out.push('…');
            break;
        }
    }
    out
}

/// An integer in the JSON grammar `-?(0|[1-9][0-9]*)` that fits in an i64. Judged on the raw
/// token because a float round trip would accept `5.0` and lose precision beyond 2^53.
fn parse_i64_token(token: &str) -> Option<i64> {
    let digits = token.strip_prefix('-').unwrap_or(token).as_bytes();
    match digits {
        [] => None,
        [b'0', _, ..] => None,
        _ if !digits.iter().all(u8::is_ascii_digit) => None,
        _ => token.parse().ok(),
    }
}

/// Where a value sits in the request, for messages. Built on the stack while walking and
/// only rendered when a rule is broken.
#[derive(Clone, Copy)]
enum Path<'p> {
    Root,
    Member(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, usize),
}

impl Path<'_> {
    fn write_to(&self, out: &mut String) {
        match *self {
            Path::Root => {}
            Path::Member(parent, name) => {
                parent.write_to(out);
                if !matches!(parent, Path::Root) {
                    out.push('.');
                }
                out.extend(name.chars().flat_map(char::escape_debug));
            }
            Path::Index(parent, index) => {
                parent.write_to(out);
                // Writing to a String cannot fail.
                let _ = write!(out, "[{index}]");
            }
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        self.write_to(&mut text);
        if text.is_empty() {
            return f.write_str("the request object");
        }
        // Unknown member names are caller input: keep the path short.
        if text.len() > ECHO_BYTES {
            let mut cut = ECHO_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        f.write_str(&text)
    }
}

/// The first rule broken, in document order. The walk goes on after it so that a syntax
/// error later in the body still wins.
#[derive(Default)]
struct Ctx {
    rejection: Option<Rejection>,
}

impl Ctx {
    fn reject(&mut self, kind: RejectKind, info: impl FnOnce() -> String) {
        if self.rejection.is_none() {
            self.rejection = Some(Rejection { kind, info: info() });
        }
    }

    fn invalid(&mut self, info: impl FnOnce() -> String) {
        self.reject(RejectKind::InvalidParameter, info);
    }
}

fn duplicate_member(name: &str, path: Path<'_>) -> String {
    format!("duplicate member \"{}\" in {path}", echo(name))
}

/// Member names seen in one object: known ones as bits, the rest in a list that is only
/// allocated when unknown members exist.
#[derive(Default)]
struct Members<'de> {
    known: u8,
    others: Vec<Cow<'de, str>>,
}

impl<'de> Members<'de> {
    /// Marks a known member as seen; false if it already was.
    fn first(&mut self, bit: u8) -> bool {
        let fresh = self.known & bit == 0;
        self.known |= bit;
        fresh
    }

    fn has(&self, bit: u8) -> bool {
        self.known & bit != 0
    }

    /// Takes member `name` (`bit` 0 for an unknown one). Gives the name back when its value is
    /// for the caller to read; otherwise skips the value here: an unknown member is noted for
    /// [`Members::check`], a repeated known one is reported.
    fn claim<A: MapAccess<'de>>(
        &mut self,
        map: &mut A,
        ctx: &mut Ctx,
        path: Path<'_>,
        name: Cow<'de, str>,
        bit: u8,
    ) -> Result<Option<Cow<'de, str>>, A::Error> {
        if bit != 0 && self.first(bit) {
            return Ok(Some(name));
        }
        if bit != 0 {
            ctx.invalid(|| duplicate_member(&name, path));
        }
        map.next_value_seed(Field {
            ctx,
            path: Path::Member(&path, &name),
            handler: Skip,
        })?;
        if bit == 0 {
            self.others.push(name);
        }
        Ok(None)
    }

    /// Reports a repeated unknown member. Sorting keeps this O(n log n) for large objects.
    fn check(&mut self, ctx: &mut Ctx, path: Path<'_>) {
        if self.others.len() < 2 || ctx.rejection.is_some() {
            return;
        }
        self.others.sort_unstable();
        if let Some([name, _]) = self
            .others
            .windows(2)
            .find(|pair| matches!(pair, [a, b] if a == b))
        {
            ctx.invalid(|| duplicate_member(name, path));
        }
    }
}

/// What one field accepts. The visitor below routes each JSON value to the matching method;
/// whatever a handler does not override is a wrong type for it.
trait Handler<'de>: Sized {
    type Out: Default;
    /// What the field must be, in words: "a string", "an array", ...
    const EXPECTED: &'static str;
    /// Whether `string` is overridden (saves copying escaped strings nobody reads).
    const TAKES_STRING: bool = false;

    fn wrong_type(self, ctx: &mut Ctx, path: Path<'_>, found: &'static str) -> Self::Out {
        ctx.invalid(|| format!("{path} must be {}; got {found}", Self::EXPECTED));
        Self::Out::default()
    }

    fn string(self, ctx: &mut Ctx, path: Path<'_>, _value: Cow<'de, str>) -> Self::Out {
        self.wrong_type(ctx, path, "a string")
    }

    fn seq<A: SeqAccess<'de>>(
        self,
        ctx: &mut Ctx,
        path: Path<'_>,
        seq: A,
    ) -> Result<Self::Out, A::Error> {
        let out = self.wrong_type(ctx, path, "an array");
        skip_seq(ctx, path, seq)?;
        Ok(out)
    }

    fn map<A: MapAccess<'de>>(
        self,
        ctx: &mut Ctx,
        path: Path<'_>,
        map: A,
    ) -> Result<Self::Out, A::Error> {
        let out = self.wrong_type(ctx, path, "an object");
        skip_map(ctx, path, map)?;
        Ok(out)
    }
}

/// One value of the request, checked by `handler`.
struct Field<'c, 'p, H> {
    ctx: &'c mut Ctx,
    path: Path<'p>,
    handler: H,
}

impl<'de, H: Handler<'de>> DeserializeSeed<'de> for Field<'_, '_, H> {
    type Value = H::Out;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<H::Out, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, H: Handler<'de>> Field<'_, '_, H> {
    fn scalar(self, found: &'static str) -> H::Out {
        self.handler.wrong_type(self.ctx, self.path, found)
    }

    fn text(self, value: Cow<'de, str>) -> H::Out {
        self.handler.string(self.ctx, self.path, value)
    }
}

impl<'de, H: Handler<'de>> Visitor<'de> for Field<'_, '_, H> {
    type Value = H::Out;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(H::EXPECTED)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<H::Out, E> {
        Ok(self.scalar("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<H::Out, E> {
        Ok(self.scalar("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<H::Out, E> {
        Ok(self.scalar("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<H::Out, E> {
        Ok(self.scalar("a number"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<H::Out, E> {
        Ok(self.scalar("null"))
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<H::Out, E> {
        Ok(self.text(Cow::Borrowed(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<H::Out, E> {
        if H::TAKES_STRING {
            Ok(self.text(Cow::Owned(value.to_owned())))
        } else {
            Ok(self.scalar("a string"))
        }
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<H::Out, E> {
        Ok(self.text(Cow::Owned(value)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<H::Out, A::Error> {
        self.handler.seq(self.ctx, self.path, seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<H::Out, A::Error> {
        self.handler.map(self.ctx, self.path, map)
    }
}

/// A member name, unescaped; borrowed unless it contained escapes.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value))
    }
}

/// Any value of an unknown field: accepted as it is, but objects inside must not repeat a
/// member name (a second copy could be read differently upstream).
struct Skip;

impl<'de> Handler<'de> for Skip {
    type Out = ();
    const EXPECTED: &'static str = "any JSON value";

    fn wrong_type(self, _: &mut Ctx, _: Path<'_>, _: &'static str) {}

    fn seq<A: SeqAccess<'de>>(self, ctx: &mut Ctx, path: Path<'_>, seq: A) -> Result<(), A::Error> {
        skip_seq(ctx, path, seq)
    }

    fn map<A: MapAccess<'de>>(self, ctx: &mut Ctx, path: Path<'_>, map: A) -> Result<(), A::Error> {
        skip_map(ctx, path, map)
    }
}

fn skip_seq<'de, A: SeqAccess<'de>>(
    ctx: &mut Ctx,
    path: Path<'_>,
    mut seq: A,
) -> Result<(), A::Error> {
    let mut index = 0;
    while seq
        .next_element_seed(Field {
            ctx: &mut *ctx,
            path: Path::Index(&path, index),
            handler: Skip,
        })?
        .is_some()
    {
        index += 1;
    }
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(
    ctx: &mut Ctx,
    path: Path<'_>,
    mut map: A,
) -> Result<(), A::Error> {
    let mut members = Members::default();
    while let Some(name) = map.next_key_seed(Name)? {
        // Every member is unknown here (bit 0): skipped, and noted for the duplicate check.
        members.claim(&mut map, &mut *ctx, path, name, 0)?;
    }
    members.check(ctx, path);
    Ok(())
}

/// The known members of the top-level object, as bits for [`Members`].
const GROUP_ID: u8 = 1;
const GROUP_COUNTER: u8 = 1 << 1;
const MODE: u8 = 1 << 2;
const GROUP_COUNTER_KEYS: u8 = 1 << 3;
/// The known members of a `GroupCounter` entry.
const KEY: u8 = 1;
const VALUE: u8 = 1 << 1;

/// The request object.
struct Top {
    api: CounterApi,
}

impl<'de> Handler<'de> for Top {
    type Out = Option<CounterRequest<'de>>;
    const EXPECTED: &'static str = "a JSON object";

    fn wrong_type(self, ctx: &mut Ctx, _: Path<'_>, found: &'static str) -> Self::Out {
        ctx.reject(RejectKind::InvalidJson, || not_an_object(found).info);
        None
    }

    fn map<A: MapAccess<'de>>(
        self,
        ctx: &mut Ctx,
        path: Path<'_>,
        mut map: A,
    ) -> Result<Self::Out, A::Error> {
        let mut members = Members::default();
        let mut group_id = None;
        let mut mode = None;
        while let Some(name) = map.next_key_seed(Name)? {
            let bit = match (self.api, &*name) {
                (_, "GroupId") => GROUP_ID,
                (CounterApi::Update, "GroupCounter") => GROUP_COUNTER,
                (CounterApi::Update, "Mode") => MODE,
                (CounterApi::Get | CounterApi::Delete, "GroupCounterKeys") => GROUP_COUNTER_KEYS,
                _ => 0,
            };
            let ctx = &mut *ctx;
            let Some(name) = members.claim(&mut map, ctx, path, name, bit)? else {
                continue;
            };
            let member = Path::Member(&path, &name);
            match bit {
                GROUP_ID => {
                    group_id = map.next_value_seed(Field {
                        ctx,
                        path: member,
                        handler: GroupId,
                    })?;
                }
                GROUP_COUNTER => map.next_value_seed(Field {
                    ctx,
                    path: member,
                    handler: Entries {
                        entry: Entry,
                        key_suffix: ".Key",
                    },
                })?,
                MODE => {
                    mode = map.next_value_seed(Field {
                        ctx,
                        path: member,
                        handler: ModeField,
                    })?;
                }
                _ => map.next_value_seed(Field {
                    ctx,
                    path: member,
                    handler: Entries {
                        entry: Key,
                        key_suffix: "",
                    },
                })?,
            }
        }
        members.check(ctx, path);
        if !members.has(GROUP_ID) {
            ctx.invalid(|| "GroupId is required".to_owned());
        }
        if self.api == CounterApi::Update && !members.has(GROUP_COUNTER) {
            ctx.invalid(|| "GroupCounter is required".to_owned());
        }
        Ok(group_id.map(|group_id| CounterRequest { group_id, mode }))
    }
}

/// `GroupId`: printable ASCII, 1 to 48 bytes, not a Community group.
struct GroupId;

impl<'de> Handler<'de> for GroupId {
    type Out = Option<Cow<'de, str>>;
    const EXPECTED: &'static str = "a string";
    const TAKES_STRING: bool = true;

    fn string(self, ctx: &mut Ctx, path: Path<'_>, value: Cow<'de, str>) -> Self::Out {
        if value.is_empty() {
            ctx.invalid(|| format!("{path} must not be empty"));
        } else if value.len() > MAX_GROUP_ID_BYTES {
            ctx.invalid(|| {
                format!(
                    "{path} is {} bytes; at most {MAX_GROUP_ID_BYTES} are allowed",
                    value.len()
                )
            });
        } else if let Some((at, c)) = value
            .char_indices()
            .find(|&(_, c)| !(' '..='~').contains(&c))
        {
            ctx.invalid(|| {
                format!(
                    "{path} must be printable ASCII (0x20 to 0x7E); got '{}' at byte {at}",
                    c.escape_debug()
                )
            });
        } else if value.starts_with(COMMUNITY_PREFIX) {
            ctx.invalid(|| {
                format!(
                    "{path} must not start with \"{COMMUNITY_PREFIX}\": Community groups have no counters; got \"{}\"",
                    echo(&value)
                )
            });
        } else {
            return Some(value);
        }
        None
    }
}

/// `Mode`: exactly one of the three names.
struct ModeField;

impl<'de> Handler<'de> for ModeField {
    type Out = Option<Mode>;
    const EXPECTED: &'static str = "a string: \"Set\", \"Increase\" or \"Decrease\"";
    const TAKES_STRING: bool = true;

    fn string(self, ctx: &mut Ctx, path: Path<'_>, value: Cow<'de, str>) -> Self::Out {
        match &*value {
            "Set" => Some(Mode::Set),
            "Increase" => Some(Mode::Increase),
            "Decrease" => Some(Mode::Decrease),
            other => {
                ctx.invalid(|| {
                    format!(
                        "{path} must be exactly \"Set\", \"Increase\" or \"Decrease\"; got \"{}\"",
                        echo(other)
                    )
                });
                None
            }
        }
    }
}

/// A counter key: a `GroupCounterKeys` element or a `GroupCounter[i].Key`. Yields the key
/// when it is valid, for the uniqueness check.
#[derive(Clone, Copy)]
struct Key;

impl<'de> Handler<'de> for Key {
    type Out = Option<Cow<'de, str>>;
    const EXPECTED: &'static str = "a string";
    const TAKES_STRING: bool = true;

    fn string(self, ctx: &mut Ctx, path: Path<'_>, value: Cow<'de, str>) -> Self::Out {
        if value.is_empty() {
            ctx.invalid(|| format!("{path} must not be empty"));
            None
        } else if value.len() > MAX_KEY_BYTES {
            ctx.invalid(|| {
                format!(
                    "{path} is {} bytes; at most {MAX_KEY_BYTES} are allowed",
                    value.len()
                )
            });
            None
        } else {
            Some(value)
        }
    }
}

/// One `GroupCounter` entry: `{"Key": .., "Value": ..}`. Yields its key when valid.
#[derive(Clone, Copy)]
struct Entry;

impl<'de> Handler<'de> for Entry {
    type Out = Option<Cow<'de, str>>;
    const EXPECTED: &'static str = "an object";

    fn map<A: MapAccess<'de>>(
        self,
        ctx: &mut Ctx,
        path: Path<'_>,
        mut map: A,
    ) -> Result<Self::Out, A::Error> {
        let mut members = Members::default();
        let mut key = None;
        while let Some(name) = map.next_key_seed(Name)? {
            let bit = match &*name {
                "Key" => KEY,
                "Value" => VALUE,
                _ => 0,
            };
            let ctx = &mut *ctx;
            let Some(name) = members.claim(&mut map, ctx, path, name, bit)? else {
                continue;
            };
            let member = Path::Member(&path, &name);
            if bit == KEY {
                key = map.next_value_seed(Field {
                    ctx,
                    path: member,
                    handler: Key,
                })?;
            } else {
                let raw: &'de RawValue = map.next_value()?;
                let token = raw.get();
                if parse_i64_token(token).is_none() {
                    ctx.invalid(|| {
                        format!(
                            "{member} must be an integer in the signed 64-bit range; got {}",
                            echo(token)
                        )
                    });
                }
            }
        }
        members.check(ctx, path);
        if !members.has(KEY) {
            ctx.invalid(|| format!("{path}.Key is required"));
        }
        if !members.has(VALUE) {
            ctx.invalid(|| format!("{path}.Value is required"));
        }
        Ok(key)
    }
}

/// `GroupCounter` or `GroupCounterKeys`: 1 to 20 entries whose keys are unique.
struct Entries<E> {
    entry: E,
    /// Where the key sits within an entry, for the message about a repeated key.
    key_suffix: &'static str,
}

impl<'de, E> Handler<'de> for Entries<E>
where
    E: Handler<'de, Out = Option<Cow<'de, str>>> + Copy,
{
    type Out = ();
    const EXPECTED: &'static str = "an array";

    fn seq<A: SeqAccess<'de>>(
        self,
        ctx: &mut Ctx,
        path: Path<'_>,
        mut seq: A,
    ) -> Result<(), A::Error> {
        // The array's size is judged before its entries: it wins over their problems.
        let clean = ctx.rejection.is_none();
        let mut keys: [Option<Cow<'de, str>>; MAX_ENTRIES] = Default::default();
        let mut count = 0;
        loop {
            let index = Path::Index(&path, count);
            let ctx = &mut *ctx;
            if count < MAX_ENTRIES {
                let Some(key) = seq.next_element_seed(Field {
                    ctx: &mut *ctx,
                    path: index,
                    handler: self.entry,
                })?
                else {
                    break;
                };
                if let Some(key) = &key {
                    if keys.iter().take(count).flatten().any(|seen| seen == key) {
                        ctx.invalid(|| {
                            format!("{index}{} repeats \"{}\"", self.key_suffix, echo(key))
                        });
                    }
                }
                if let Some(slot) = keys.get_mut(count) {
                    *slot = key;
                }
            } else if seq
                .next_element_seed(Field {
                    ctx,
                    path: index,
                    handler: Skip,
                })?
                .is_none()
            {
                break;
            }
            count += 1;
        }
        if count == 0 {
            ctx.invalid(|| format!("{path} is empty; at least 1 entry is required"));
        } else if count > MAX_ENTRIES && clean {
            ctx.rejection = Some(Rejection {
                kind: RejectKind::TooManyEntries,
                info: format!("{path} has {count} entries; at most {MAX_ENTRIES} are allowed"),
            });
        }
        Ok(())
    }
}

/// The top-level walk of [`validate_object`]: `None` for an object, else what was found.
struct Shape;

impl<'de> Visitor<'de> for Shape {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Some("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Some("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Some("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Some("a number"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Some("null"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Some("a string"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element_seed(Walk)?.is_some() {}
        Ok(Some("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry_seed(Walk, Walk)?.is_some() {}
        Ok(None)
    }
}

/// Reads any value fully, so that the other APIs' bodies are held to the same JSON grammar
/// (string escapes, number range) as the counter APIs' bodies.
#[derive(Clone, Copy)]
struct Walk;

impl<'de> DeserializeSeed<'de> for Walk {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry_seed(self, self)?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const UPDATE: CounterApi = CounterApi::Update;
    const GET: CounterApi = CounterApi::Get;
    const DELETE: CounterApi = CounterApi::Delete;
    const ALL: [CounterApi; 3] = [GET, UPDATE, DELETE];

    fn q(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    #[track_caller]
    fn accepts(api: CounterApi, body: &str) -> CounterRequest<'_> {
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
    fn rejects(api: CounterApi, body: &str, code: u32, needle: &str) -> Rejection {
        rejects_bytes(api, body.as_bytes(), code, needle)
    }

    #[track_caller]
    fn rejects_bytes(api: CounterApi, body: &[u8], code: u32, needle: &str) -> Rejection {
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

    fn with_group_id(api: CounterApi, group_id: &str) -> String {
        match api {
            CounterApi::Update => {
                format!(r#"{{"GroupId":{group_id},"GroupCounter":[{{"Key":"k","Value":1}}]}}"#)
            }
            CounterApi::Get | CounterApi::Delete => format!(r#"{{"GroupId":{group_id}}}"#),
        }
    }

    fn with_mode(mode: &str) -> String {
        format!(r#"{{"GroupId":"g1","GroupCounter":[{{"Key":"k","Value":1}}],"Mode":{mode}}}"#)
    }

    #[test]
    fn api_names() {
        assert_eq!(
            CounterApi::from_api("group_open_http_svc/get_group_counter"),
            Some(GET)
        );
        assert_eq!(
            CounterApi::from_api("group_open_http_svc/update_group_counter"),
            Some(UPDATE)
        );
        assert_eq!(
            CounterApi::from_api("group_open_http_svc/delete_group_counter"),
            Some(DELETE)
        );
        for other in [
            "",
            "group_open_http_svc/get_group_info",
            "group_open_http_svc/get_group_counter/",
            "/group_open_http_svc/get_group_counter",
            "GROUP_OPEN_HTTP_SVC/GET_GROUP_COUNTER",
            "v4/group_open_http_svc/update_group_counter",
        ] {
            assert_eq!(CounterApi::from_api(other), None, "{other}");
        }
        for api in ALL {
            assert_eq!(CounterApi::from_api(api.as_str()), Some(api));
        }
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

    #[test]
    fn idempotency() {
        let request = |mode| CounterRequest {
            group_id: "g".into(),
            mode,
        };
        assert!(request(Some(Mode::Set)).is_idempotent(UPDATE));
        assert!(!request(Some(Mode::Increase)).is_idempotent(UPDATE));
        assert!(!request(Some(Mode::Decrease)).is_idempotent(UPDATE));
        assert!(!request(None).is_idempotent(UPDATE));
        assert!(request(None).is_idempotent(GET));
        assert!(request(None).is_idempotent(DELETE));
    }

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
                &format!(
                    "Mode must be a string: \"Set\", \"Increase\" or \"Decrease\"; got {found}"
                ),
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
        api: CounterApi,
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
                    format!("Mode must be exactly \"Set\", \"Increase\" or \"Decrease\"; got \"{shown}\""),
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
            match validate_counter(valid.api, body.as_bytes()) {
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
}
