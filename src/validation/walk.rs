//! The JSON walk under every counter rule: where a value sits (paths), repeated member names,
//! raw integer tokens, and echoing caller input safely into messages.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::{RejectKind, Rejection};

/// Caller input echoed in a message is cut to about this many bytes.
pub(super) const ECHO_BYTES: usize = 64;

/// Caller input as it may appear in a message: escaped, cut to about [`ECHO_BYTES`] bytes on a
/// character boundary.
pub(super) fn echo(input: &str) -> String {
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
pub(super) fn parse_i64_token(token: &str) -> Option<i64> {
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
pub(super) enum Path<'p> {
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
pub(super) struct Ctx {
    pub(super) rejection: Option<Rejection>,
}

impl Ctx {
    pub(super) fn reject(&mut self, kind: RejectKind, info: impl FnOnce() -> String) {
        if self.rejection.is_none() {
            self.rejection = Some(Rejection { kind, info: info() });
        }
    }

    pub(super) fn invalid(&mut self, info: impl FnOnce() -> String) {
        self.reject(RejectKind::InvalidParameter, info);
    }
}

pub(super) fn duplicate_member(name: &str, path: Path<'_>) -> String {
    format!("duplicate member \"{}\" in {path}", echo(name))
}

/// Member names seen in one object: known ones as bits, the rest in a list that is only
/// allocated when unknown members exist.
#[derive(Default)]
pub(super) struct Members<'de> {
    known: u8,
    others: Vec<Cow<'de, str>>,
}

impl<'de> Members<'de> {
    /// Marks a known member as seen; false if it already was.
    pub(super) fn first(&mut self, bit: u8) -> bool {
        let fresh = self.known & bit == 0;
        self.known |= bit;
        fresh
    }

    pub(super) fn has(&self, bit: u8) -> bool {
        self.known & bit != 0
    }

    /// Whether a member besides the known ones was met.
    pub(super) fn has_unknown(&self) -> bool {
        !self.others.is_empty()
    }

    /// Takes member `name` (`bit` 0 for an unknown one). Gives the name back when its value is
    /// for the caller to read; otherwise skips the value here: an unknown member is noted for
    /// [`Members::check`], a repeated known one is reported.
    pub(super) fn claim<A: MapAccess<'de>>(
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
    pub(super) fn check(&mut self, ctx: &mut Ctx, path: Path<'_>) {
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
pub(super) trait Handler<'de>: Sized {
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
pub(super) struct Field<'c, 'p, H> {
    pub(super) ctx: &'c mut Ctx,
    pub(super) path: Path<'p>,
    pub(super) handler: H,
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
pub(super) struct Name;

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
pub(super) struct Skip;

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

pub(super) fn skip_seq<'de, A: SeqAccess<'de>>(
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

pub(super) fn skip_map<'de, A: MapAccess<'de>>(
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
