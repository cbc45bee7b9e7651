//! The group counter payload rules (`GroupId`, `GroupCounter`, `GroupCounterKeys`, `Mode`),
//! checked in one streaming pass that borrows from the caller's bytes.
//!
//! A rule broken inside the document is remembered and the pass goes on, so that a body that
//! is not valid JSON is always reported as such (60003) rather than as the first field problem
//! met before the syntax error.

use std::borrow::Cow;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess};
use serde_json::value::RawValue;

use super::walk::{echo, parse_i64_token, Ctx, Field, Handler, Members, Name, Path, Skip};
use super::{body_text, not_an_object, syntax_error, RejectKind, Rejection};

/// Most entries in `GroupCounter` or `GroupCounterKeys` (a group holds at most 20 counters).
pub const MAX_ENTRIES: usize = 20;
/// Longest counter key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 128;
/// Longest group ID, in bytes.
pub const MAX_GROUP_ID_BYTES: usize = 48;
/// Community group IDs start with this, and Community groups have no counters.
pub(super) const COMMUNITY_PREFIX: &str = "@TGS#_";
/// Which of the counter payloads a body must be: the rules differ by API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CounterPayload {
    Get,
    Update,
    Delete,
}

/// `Mode` of `update_group_counter`. Only `Increase` and `Decrease` are ever merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Set,
    Increase,
    Decrease,
}

impl Mode {
    /// The member's value, as Tencent spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Set => "Set",
            Mode::Increase => "Increase",
            Mode::Decrease => "Decrease",
        }
    }
}

/// What the gateway needs downstream of validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterRequest<'a> {
    /// The group ID with JSON escapes resolved (borrowed from the body when it had none).
    pub group_id: Cow<'a, str>,
    /// Only for Update; `None` when absent.
    pub mode: Option<Mode>,
    /// No member besides the known ones (`GroupId`, `GroupCounter` with entries of only `Key`
    /// and `Value`, `Mode`, `GroupCounterKeys`): nothing a merge of two requests could drop.
    pub plain: bool,
}

/// Checks the body of a group counter API call. On success the returned request borrows from
/// `body`; the body itself is meant to be forwarded unchanged.
pub fn validate_counter(
    payload: CounterPayload,
    body: &[u8],
) -> Result<CounterRequest<'_>, Rejection> {
    let text = body_text(body)?;
    let mut ctx = Ctx::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let request = Field {
        ctx: &mut ctx,
        path: Path::Root,
        handler: Top { payload },
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
    payload: CounterPayload,
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
        let mut counters = Counters::default();
        while let Some(name) = map.next_key_seed(Name)? {
            let bit = match (self.payload, &*name) {
                (_, "GroupId") => GROUP_ID,
                (CounterPayload::Update, "GroupCounter") => GROUP_COUNTER,
                (CounterPayload::Update, "Mode") => MODE,
                (CounterPayload::Get | CounterPayload::Delete, "GroupCounterKeys") => {
                    GROUP_COUNTER_KEYS
                }
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
                GROUP_COUNTER => {
                    counters = map.next_value_seed(Field {
                        ctx,
                        path: member,
                        handler: Entries {
                            entry: Entry,
                            key_suffix: ".Key",
                        },
                    })?;
                }
                MODE => {
                    mode = map.next_value_seed(Field {
                        ctx,
                        path: member,
                        handler: ModeField,
                    })?;
                }
                _ => {
                    map.next_value_seed(Field {
                        ctx,
                        path: member,
                        handler: Entries {
                            entry: Key,
                            key_suffix: "",
                        },
                    })?;
                }
            }
        }
        members.check(ctx, path);
        if !members.has(GROUP_ID) {
            ctx.invalid(|| "GroupId is required".to_owned());
        }
        if self.payload == CounterPayload::Update && !members.has(GROUP_COUNTER) {
            ctx.invalid(|| "GroupCounter is required".to_owned());
        }
        let Some(group_id) = group_id else {
            return Ok(None);
        };
        let plain = !members.has_unknown() && !counters.extras;
        Ok(Some(CounterRequest {
            group_id,
            mode,
            plain,
        }))
    }
}

/// `GroupId`: printable ASCII, 1 to 48 bytes, not a Community group.
struct GroupId;

impl<'de> Handler<'de> for GroupId {
    type Out = Option<Cow<'de, str>>;
    const EXPECTED: &'static str = "a string";
    const TAKES_STRING: bool = true;

    fn string(self, ctx: &mut Ctx, path: Path<'_>, value: Cow<'de, str>) -> Self::Out {
        if !length_ok(ctx, path, &value, MAX_GROUP_ID_BYTES) {
            return None;
        }
        if let Some((at, c)) = value
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
        length_ok(ctx, path, &value, MAX_KEY_BYTES).then_some(value)
    }
}

/// The rule group IDs and keys share: 1 to `max` bytes. Records why not and says no otherwise.
fn length_ok(ctx: &mut Ctx, path: Path<'_>, value: &str, max: usize) -> bool {
    if value.is_empty() {
        ctx.invalid(|| format!("{path} must not be empty"));
        false
    } else if value.len() > max {
        ctx.invalid(|| format!("{path} is {} bytes; at most {max} are allowed", value.len()));
        false
    } else {
        true
    }
}

/// One `GroupCounter` entry: `{"Key": .., "Value": ..}`. Yields it when its key is valid.
#[derive(Clone, Copy)]
struct Entry;

/// A `GroupCounter` entry as read. Its value is checked, not kept: the body is forwarded as it
/// came, and the coalescer reads a mergeable body's values itself.
struct Counter<'de> {
    key: Cow<'de, str>,
    /// No member besides `Key` and `Value`.
    plain: bool,
}

impl<'de> Handler<'de> for Entry {
    type Out = Option<Counter<'de>>;
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
        let plain = !members.has_unknown();
        Ok(key.map(|key| Counter { key, plain }))
    }
}

/// `GroupCounter` or `GroupCounterKeys`: 1 to 20 entries whose keys are unique.
struct Entries<E> {
    entry: E,
    /// Where the key sits within an entry, for the message about a repeated key.
    key_suffix: &'static str,
}

/// The first [`MAX_ENTRIES`] entries with a valid key, in order: on the stack, no allocation.
type Slots<T> = [Option<T>; MAX_ENTRIES];

/// An entry of `GroupCounter` or `GroupCounterKeys`: notes in what the whole array yields to
/// later layers what it has to say, and hands over its key for the uniqueness rule.
trait Keyed<'de> {
    type Collected: Default;
    fn into_key(self, collected: &mut Self::Collected) -> Cow<'de, str>;
}

/// `GroupCounterKeys` yields nothing: no layer reads the keys.
impl<'de> Keyed<'de> for Cow<'de, str> {
    type Collected = ();

    fn into_key(self, _: &mut ()) -> Cow<'de, str> {
        self
    }
}

impl<'de> Keyed<'de> for Counter<'de> {
    type Collected = Counters;

    fn into_key(self, collected: &mut Counters) -> Cow<'de, str> {
        collected.extras |= !self.plain;
        self.key
    }
}

/// What `GroupCounter` yields: whether an entry held more than `Key` and `Value`.
#[derive(Default)]
struct Counters {
    extras: bool,
}

impl<'de, E, T> Handler<'de> for Entries<E>
where
    E: Handler<'de, Out = Option<T>> + Copy,
    T: Keyed<'de>,
{
    type Out = T::Collected;
    const EXPECTED: &'static str = "an array";

    fn seq<A: SeqAccess<'de>>(
        self,
        ctx: &mut Ctx,
        path: Path<'_>,
        mut seq: A,
    ) -> Result<T::Collected, A::Error> {
        // The array's size is judged before its entries: it wins over their problems.
        let clean = ctx.rejection.is_none();
        let mut keys: Slots<Cow<'de, str>> = Default::default();
        let mut collected = T::Collected::default();
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
                let key = key.map(|entry| entry.into_key(&mut collected));
                if let Some(key) = key.as_deref() {
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
        Ok(collected)
    }
}
