//! Reads typed values out of a TOML table, collecting every problem (key, value, why) instead
//! of stopping at the first, so that `check-config` can list them all at once.

use std::net::SocketAddr;
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

    pub fn string(&mut self, t: &Table, section: &str, key: &str) -> Option<String> {
        match t.get(key) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.problem(
                    &format!("{section}.{key}"),
                    Some(other.to_string()),
                    "must be a string",
                );
                None
            }
        }
    }

    pub fn boolean(&mut self, t: &Table, section: &str, key: &str) -> Option<bool> {
        match t.get(key) {
            None => None,
            Some(Value::Boolean(b)) => Some(*b),
            Some(other) => {
                self.problem(
                    &format!("{section}.{key}"),
                    Some(other.to_string()),
                    "must be true or false",
                );
                None
            }
        }
    }

    pub fn socket_addr(&mut self, t: &Table, section: &str, key: &str) -> Option<SocketAddr> {
        let text = self.string(t, section, key)?;
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    &format!("{section}.{key}"),
                    Some(format!("{text:?}")),
                    "must be an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                );
                None
            }
        }
    }

    pub fn duration(
        &mut self,
        t: &Table,
        section: &str,
        key: &str,
        zero_ok: bool,
    ) -> Option<Duration> {
        let text = self.string(t, section, key)?;
        match humantime::parse_duration(&text) {
            Ok(d) if d > MAX_DURATION => {
                self.problem(
                    &format!("{section}.{key}"),
                    Some(format!("{text:?}")),
                    "must be at most 365 days",
                );
                None
            }
            Ok(d) if zero_ok || !d.is_zero() => Some(d),
            Ok(_) => {
                self.problem(
                    &format!("{section}.{key}"),
                    Some(format!("{text:?}")),
                    "must be more than zero",
                );
                None
            }
            Err(e) => {
                self.problem(
                    &format!("{section}.{key}"),
                    Some(format!("{text:?}")),
                    &format!("not a duration ({e}); write e.g. \"250ms\", \"5s\", \"1h\""),
                );
                None
            }
        }
    }

    pub fn positive_int(&mut self, t: &Table, section: &str, key: &str, max: i64) -> Option<i64> {
        let value = t.get(key)?;
        match value.as_integer() {
            Some(n) if n > 0 && n <= max => Some(n),
            _ => {
                self.problem(
                    &format!("{section}.{key}"),
                    Some(value.to_string()),
                    &format!("must be a positive integer of at most {max}"),
                );
                None
            }
        }
    }
}
