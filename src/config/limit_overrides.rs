//! `[[rate_limit.groups]]` and `[rate_limit.apis."service/command"]`: budgets that differ from
//! the defaults for some GroupIds and some APIs. An array of tables and a table of tables, so
//! read here rather than by the `section!` scalar readers, with every problem reported (key,
//! value, why) as for any other key.

use std::collections::HashSet;

use toml::{Table, Value};

use super::apis::is_api_name;
use super::reader::{Reader, Section};

/// At most this many GroupIds over all `[[rate_limit.groups]]` tables.
pub const MAX_GROUP_IDS: usize = 100_000;
/// At most this many prefixes over all `[[rate_limit.groups]]` tables.
pub const MAX_PREFIXES: usize = 10_000;
/// A GroupId, and so a useful prefix, is 1 to 48 bytes.
const MAX_ID_BYTES: usize = 48;
/// Rates and bursts: 1 to a billion, as the defaults.
const MAX_RATE: i64 = 1_000_000_000;

/// Which GroupIds one `[[rate_limit.groups]]` table is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupMatch {
    /// `ids`: exactly these.
    Ids(Vec<String>),
    /// `prefix`: every GroupId that starts with it.
    Prefix(String),
}

/// One `[[rate_limit.groups]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLimits {
    pub matches: GroupMatch,
    pub per_second: u32,
    pub burst: u32,
}

/// One `[rate_limit.apis."service/command"]` table: the app-wide budget of that API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiLimits {
    pub api: String,
    pub per_second: u32,
    pub burst: u32,
}

/// `groups`: an array of tables; the valid ones are kept, each problem is noted.
pub fn read_groups(r: &mut Reader, s: &Section, key: &str) -> Option<Vec<GroupLimits>> {
    let value = s.table.get(key)?;
    let Some(items) = value.as_array() else {
        let why = "must be an array of tables ([[rate_limit.groups]])";
        r.problem(&s.key(key), Some(value.to_string()), why);
        return None;
    };
    let mut seen = Seen::default();
    let mut groups = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let name = format!("{}[{i}]", s.key(key));
        let Some(table) = item.as_table() else {
            r.problem(&name, Some(item.to_string()), "must be a table");
            continue;
        };
        if let Some(group) = read_group(r, &name, table, &mut seen) {
            groups.push(group);
        }
    }
    Some(groups)
}

/// The GroupIds and prefixes named so far, over all tables.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    prefixes: HashSet<String>,
}

fn read_group(r: &mut Reader, name: &str, t: &Table, seen: &mut Seen) -> Option<GroupLimits> {
    unknown_keys(r, name, t, &["ids", "prefix", "per_second", "burst"]);
    let (per_second, burst) = rates(r, name, t, |per_second| per_second)?;
    let matches = match (t.get("ids"), t.get("prefix")) {
        (Some(ids), None) => GroupMatch::Ids(read_ids(r, &format!("{name}.ids"), ids, seen)?),
        (None, Some(prefix)) => {
            GroupMatch::Prefix(read_prefix(r, &format!("{name}.prefix"), prefix, seen)?)
        }
        (Some(_), Some(_)) => {
            r.problem(name, None, "takes ids or prefix, not both");
            return None;
        }
        (None, None) => {
            r.problem(name, None, "needs ids (GroupIds) or prefix");
            return None;
        }
    };
    Some(GroupLimits {
        matches,
        per_second,
        burst,
    })
}

/// A GroupId or a prefix: 1 to 48 bytes of printable ASCII.
fn id_problem(text: &str) -> Option<&'static str> {
    if text.is_empty() || text.len() > MAX_ID_BYTES {
        Some("must be 1 to 48 bytes")
    } else if !text.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        Some("must be printable ASCII (0x20 to 0x7E)")
    } else {
        None
    }
}

fn read_ids(r: &mut Reader, key: &str, value: &Value, seen: &mut Seen) -> Option<Vec<String>> {
    let Some(items) = value.as_array() else {
        r.problem(key, Some(value.to_string()), "must be an array of GroupIds");
        return None;
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let shown = Some(item.to_string());
        let Some(id) = item.as_str() else {
            r.problem(key, shown, "each GroupId must be a string");
            continue;
        };
        if let Some(why) = id_problem(id) {
            r.problem(key, shown, why);
        } else if seen.ids.contains(id) {
            r.problem(
                key,
                shown,
                "GroupId named twice (each takes one table's limits)",
            );
        } else if seen.ids.len() >= MAX_GROUP_IDS {
            r.problem(key, shown, "more than 100000 GroupIds in all");
            return None;
        } else {
            seen.ids.insert(id.to_string());
            ids.push(id.to_string());
        }
    }
    Some(ids)
}

fn read_prefix(r: &mut Reader, key: &str, value: &Value, seen: &mut Seen) -> Option<String> {
    let shown = Some(value.to_string());
    let Some(prefix) = value.as_str() else {
        r.problem(key, shown, "must be a string");
        return None;
    };
    if let Some(why) = id_problem(prefix) {
        r.problem(key, shown, why);
        return None;
    }
    if seen.prefixes.contains(prefix) {
        r.problem(key, shown, "prefix named twice");
        return None;
    }
    if seen.prefixes.len() >= MAX_PREFIXES {
        r.problem(key, shown, "more than 10000 prefixes in all");
        return None;
    }
    seen.prefixes.insert(prefix.to_string());
    Some(prefix.to_string())
}

/// `apis`: a table of `"service/command"` tables.
pub fn read_apis(r: &mut Reader, s: &Section, key: &str) -> Option<Vec<ApiLimits>> {
    let value = s.table.get(key)?;
    let Some(table) = value.as_table() else {
        let why = "must be a table of [rate_limit.apis.\"service/command\"] tables";
        r.problem(&s.key(key), Some(value.to_string()), why);
        return None;
    };
    let mut apis = Vec::new();
    for (api, item) in table {
        let name = format!("{}.\"{api}\"", s.key(key));
        if !is_api_name(api) {
            let why = "must be named \"service/command\" (lowercase letters, digits, underscores)";
            r.problem(&name, None, why);
            continue;
        }
        let Some(t) = item.as_table() else {
            r.problem(&name, Some(item.to_string()), "must be a table");
            continue;
        };
        unknown_keys(r, &name, t, &["per_second", "burst"]);
        // Like app_burst: a tenth of a second's worth.
        if let Some((per_second, burst)) = rates(r, &name, t, |per_second| per_second / 10) {
            apis.push(ApiLimits {
                api: api.clone(),
                per_second,
                burst,
            });
        }
    }
    Some(apis)
}

/// `per_second` (required) and `burst` (by default `default_burst(per_second)`, at least 1).
fn rates(
    r: &mut Reader,
    name: &str,
    t: &Table,
    default_burst: fn(u32) -> u32,
) -> Option<(u32, u32)> {
    let per_second = match t.get("per_second") {
        None => {
            r.problem(&format!("{name}.per_second"), None, "required");
            None
        }
        Some(value) => rate(r, &format!("{name}.per_second"), value),
    };
    let burst = t
        .get("burst")
        .map(|value| rate(r, &format!("{name}.burst"), value));
    let per_second = per_second?;
    let burst = match burst {
        None => default_burst(per_second).max(1),
        Some(burst) => burst?,
    };
    Some((per_second, burst))
}

fn rate(r: &mut Reader, key: &str, value: &Value) -> Option<u32> {
    let n = value
        .as_integer()
        .filter(|n| (1..=MAX_RATE).contains(n))
        .and_then(|n| u32::try_from(n).ok());
    if n.is_none() {
        let why = "must be a positive integer of at most 1000000000";
        r.problem(key, Some(value.to_string()), why);
    }
    n
}

fn unknown_keys(r: &mut Reader, name: &str, t: &Table, takes: &[&str]) {
    for key in t.keys().filter(|k| !takes.contains(&k.as_str())) {
        let why = format!("unknown key; takes {}", takes.join(", "));
        r.problem(&format!("{name}.{key}"), None, &why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MINIMAL;
    use crate::config::Config;

    fn problems(extra: &str) -> Vec<crate::config::Problem> {
        let text = format!("{MINIMAL}{extra}");
        Config::parse(&text).expect_err("invalid").0
    }

    #[test]
    fn tables_are_read_with_their_default_bursts() {
        let text = format!(
            "{MINIMAL}[[rate_limit.groups]]\nids = [\"@TGS#a1\", \"b\"]\nper_second = 100\nburst = 200\n\
             [[rate_limit.groups]]\nprefix = \"load-\"\nper_second = 3\n\
             [rate_limit.apis.\"group_open_http_svc/send_group_msg\"]\nper_second = 55\n"
        );
        let config = Config::parse(&text).expect("valid").rate_limit;
        assert_eq!(
            config.groups,
            vec![
                GroupLimits {
                    matches: GroupMatch::Ids(vec!["@TGS#a1".into(), "b".into()]),
                    per_second: 100,
                    burst: 200,
                },
                GroupLimits {
                    matches: GroupMatch::Prefix("load-".into()),
                    per_second: 3,
                    burst: 3,
                },
            ]
        );
        assert_eq!(
            config.apis,
            vec![ApiLimits {
                api: "group_open_http_svc/send_group_msg".into(),
                per_second: 55,
                burst: 5,
            }]
        );
    }

    #[test]
    fn duplicates_both_keys_and_missing_rates_are_problems() {
        let g = "[[rate_limit.groups]]\n";
        for (extra, key, why) in [
            (
                format!("{g}ids = [\"a\", \"a\"]\nper_second = 1\n"),
                "rate_limit.groups[0].ids",
                "twice",
            ),
            (
                format!("{g}ids = [\"a\"]\nper_second = 1\n{g}ids = [\"a\"]\nper_second = 2\n"),
                "rate_limit.groups[1].ids",
                "twice",
            ),
            (
                format!("{g}prefix = \"p\"\nper_second = 1\n{g}prefix = \"p\"\nper_second = 2\n"),
                "rate_limit.groups[1].prefix",
                "twice",
            ),
            (
                format!("{g}ids = [\"a\"]\nprefix = \"p\"\nper_second = 1\n"),
                "rate_limit.groups[0]",
                "not both",
            ),
            (
                format!("{g}per_second = 1\n"),
                "rate_limit.groups[0]",
                "ids",
            ),
            (
                format!("{g}ids = [\"a\"]\n"),
                "rate_limit.groups[0].per_second",
                "required",
            ),
            (
                format!("{g}ids = [\"a\"]\nper_second = 0\n"),
                "rate_limit.groups[0].per_second",
                "positive",
            ),
            (
                format!("{g}prefix = \"\"\nper_second = 1\n"),
                "rate_limit.groups[0].prefix",
                "1 to 48",
            ),
            (
                format!("{g}ids = [\"a\"]\nper_second = 1\nrate = 2\n"),
                "rate_limit.groups[0].rate",
                "unknown",
            ),
            (
                "[rate_limit]\ngroups = 3\n".to_string(),
                "rate_limit.groups",
                "array of tables",
            ),
            (
                "[rate_limit.apis.\"a/b\"]\nburst = 3\n".to_string(),
                "rate_limit.apis.\"a/b\".per_second",
                "required",
            ),
            (
                "[rate_limit.apis.\"A/b\"]\nper_second = 3\n".to_string(),
                "rate_limit.apis.\"A/b\"",
                "service/command",
            ),
            (
                "[rate_limit.apis.\"a/b\"]\nper_second = 3\nx = 1\n".to_string(),
                "rate_limit.apis.\"a/b\".x",
                "unknown",
            ),
        ] {
            let problems = problems(&extra);
            assert_eq!(problems.len(), 1, "{extra}: {problems:?}");
            assert_eq!(problems[0].key, key, "{extra}");
            assert!(problems[0].why.contains(why), "{extra}: {}", problems[0]);
        }
    }

    #[test]
    fn at_most_100000_ids() {
        let ids: Vec<String> = (0..=MAX_GROUP_IDS).map(|i| format!("\"g{i}\"")).collect();
        let extra = format!(
            "[[rate_limit.groups]]\nids = [{}]\nper_second = 1\n",
            ids.join(",")
        );
        let problems = problems(&extra);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].why.contains("100000"), "{}", problems[0]);
    }
}
