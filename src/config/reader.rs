//! Reads typed values out of a TOML table, collecting every problem (key, value, why) instead
//! of stopping at the first, so that `check-config` can list them all at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use super::Problem;

/// The longest duration any key takes: longer ones are typos, and would overflow the clock
/// when added to it.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Collects problems while reading typed values out of the TOML tree.
#[derive(Default)]
pub struct Reader {
    pub problems: Vec<Problem>,
}

impl Reader {
    pub fn problem(&mut self, key: &str, value: Option<String>, why: &str) {
        self.problems.push(Problem {
            key: key.to_string(),
            value,
            why: why.to_string(),
        });
    }

    pub fn unknown_keys(&mut self, table: &Table, schema: &[(&str, &[&str])]) {
        for (name, value) in table {
            match schema.iter().find(|(section, _)| section == name) {
                None => self.problem(
                    name,
                    None,
                    &format!(
                        "unknown section; expected one of {}",
                        schema
                            .iter()
                            .map(|(s, _)| *s)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                Some((_, keys)) => {
                    if let Value::Table(section) = value {
                        for key in section.keys() {
                            if !keys.contains(&key.as_str()) {
                                self.problem(
                                    &format!("{name}.{key}"),
                                    None,
                                    &format!("unknown key; [{name}] takes {}", keys.join(", ")),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn section<'t>(&mut self, table: &'t Table, name: &str) -> Option<&'t Table> {
        match table.get(name) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                self.problem(name, Some(other.to_string()), "must be a table ([section])");
                None
            }
        }
    }

    /// A string key, or `None` (absent, or a problem noted).
    pub fn string(&mut self, s: &Section, key: &str) -> Option<String> {
        match s.table.get(key) {
            None => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(other) => {
                self.problem(&s.key(key), Some(other.to_string()), "must be a string");
                None
            }
        }
    }

    /// A path key, for a field that is `None` when the key is absent.
    pub fn path(&mut self, s: &Section, key: &str) -> Option<Option<PathBuf>> {
        self.string(s, key).map(|path| Some(path.into()))
    }

    /// A string key, for a field that is `None` when the key is absent.
    pub fn optional_string(&mut self, s: &Section, key: &str) -> Option<Option<String>> {
        self.string(s, key).map(Some)
    }

    /// A string key turned into `T` by `parse`; its error is the problem's why.
    pub fn parsed<T>(
        &mut self,
        s: &Section,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.string(s, key)?;
        match parse(&text) {
            Ok(value) => Some(value),
            Err(why) => {
                self.problem(&s.key(key), Some(format!("{text:?}")), &why);
                None
            }
        }
    }

    pub fn boolean(&mut self, s: &Section, key: &str) -> Option<bool> {
        match s.table.get(key) {
            None => None,
            Some(Value::Boolean(b)) => Some(*b),
            Some(other) => {
                self.problem(
                    &s.key(key),
                    Some(other.to_string()),
                    "must be true or false",
                );
                None
            }
        }
    }

    pub fn socket_addr(&mut self, s: &Section, key: &str) -> Option<SocketAddr> {
        self.parsed(s, key, |text| {
            text.parse::<SocketAddr>().map_err(|_| {
                "must be an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"".into()
            })
        })
    }

    /// A duration of at most [`MAX_DURATION`]; zero only when `zero_ok`.
    pub fn duration(&mut self, s: &Section, key: &str, zero_ok: bool) -> Option<Duration> {
        self.parsed(s, key, |text| match humantime::parse_duration(text) {
            Ok(d) if d > MAX_DURATION => Err("must be at most 365 days".into()),
            Ok(d) if zero_ok || !d.is_zero() => Ok(d),
            Ok(_) => Err("must be more than zero".into()),
            Err(e) => Err(format!(
                "not a duration ({e}); write e.g. \"250ms\", \"5s\", \"1h\""
            )),
        })
    }

    /// An integer in `range` (which `T` holds); `why` says what it must be.
    pub fn int_in<T: TryFrom<i64>>(
        &mut self,
        s: &Section,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        why: &str,
    ) -> Option<T> {
        let value = s.table.get(key)?;
        let n = value
            .as_integer()
            .filter(|n| range.contains(n))
            .and_then(|n| T::try_from(n).ok());
        if n.is_none() {
            self.problem(&s.key(key), Some(value.to_string()), why);
        }
        n
    }

    /// An integer from 1 to `max`.
    pub fn positive_int<T: TryFrom<i64>>(&mut self, s: &Section, key: &str, max: i64) -> Option<T> {
        let why = format!("must be a positive integer of at most {max}");
        self.int_in(s, key, 1..=max, &why)
    }
}

/// One section of the file: its name and its table.
pub struct Section<'t> {
    pub name: &'static str,
    pub table: &'t Table,
}

impl Section<'_> {
    /// The dotted name of one of its keys, as problems show it.
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }

    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }
}

/// Declares a section's keys once: each is a field of the section's struct with its doc line,
/// its default and how its value is read (`fn(&mut Reader, &Section, key) -> Option<T>`,
/// `None` when absent or wrong, the reader holding the problem). From it come the struct, its
/// `Default`, the section's `SECTION` name and `KEYS` (what the unknown-key check takes), and
/// `read_keys`; cross-key checks stay with each section.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident in $section:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $default:expr, $read:expr;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }

        /// The section's name in the file.
        pub const SECTION: &str = $section;
        /// The keys the section takes: its struct's fields.
        pub const KEYS: &[&str] = &[ $( stringify!($field) ),* ];

        impl $name {
            /// Every key of the section; one that is absent or wrong (a problem in `r`) keeps
            /// its default.
            pub(super) fn read_keys(
                r: &mut $crate::config::reader::Reader,
                t: &toml::Table,
            ) -> Self {
                let s = $crate::config::reader::Section { name: $section, table: t };
                let d = Self::default();
                $name {
                    $( $field: {
                        let read: fn(
                            &mut $crate::config::reader::Reader,
                            &$crate::config::reader::Section<'_>,
                            &'static str,
                        ) -> Option<$ty> = $read;
                        read(r, &s, stringify!($field)).unwrap_or(d.$field)
                    }, )*
                }
            }

            /// Whether `other` holds the same value of `key`; `None`: the section has no
            /// such key.
            pub fn same_key(&self, other: &Self, key: &str) -> Option<bool> {
                match key {
                    $( stringify!($field) => Some(self.$field == other.$field), )*
                    _ => None,
                }
            }

            /// Takes `from`'s value of `key`; false: the section has no such key.
            pub fn keep_key(&mut self, from: &Self, key: &str) -> bool {
                match key {
                    $( stringify!($field) => {
                        self.$field = from.$field.clone();
                        true
                    } )*
                    _ => false,
                }
            }
        }
    };
}
pub(crate) use section;
