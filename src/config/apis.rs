//! `[apis]`: which v4 APIs callers may reach.

use super::reader::{section, Reader, Section};

section! {
    /// Which v4 APIs callers may reach.
    pub struct ApisConfig in "apis" {
        /// `"service/command"` names, or `"*"` for every v4 API; by default the validated ones.
        allow: ApiAllowList = ApiAllowList::counters(), read_allow;
    }
}

/// Which v4 APIs callers may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAllowList {
    /// `"*"`: every v4 API.
    Any,
    /// `service/command` names.
    Only(Vec<String>),
}

impl ApiAllowList {
    /// The default: every API in the registry of validated APIs (the group counter APIs).
    pub fn counters() -> Self {
        ApiAllowList::Only(
            crate::validated_apis::allowed_by_default()
                .map(String::from)
                .collect(),
        )
    }
}

impl Default for ApiAllowList {
    fn default() -> Self {
        ApiAllowList::counters()
    }
}

fn read_allow(r: &mut Reader, s: &Section, key: &str) -> Option<ApiAllowList> {
    let value = s.table.get(key)?;
    let Some(items) = value.as_array() else {
        r.problem(
            &s.key(key),
            Some(value.to_string()),
            "must be an array of \"service/command\" strings",
        );
        return None;
    };
    let mut names = Vec::new();
    let mut any = false;
    for item in items {
        match item.as_str() {
            Some("*") => any = true,
            Some(name) if is_api_name(name) => {
                if !names.iter().any(|n: &String| n == name) {
                    names.push(name.to_string());
                }
            }
            _ => r.problem(
                &s.key(key),
                Some(item.to_string()),
                "each entry must be \"service/command\" (lowercase letters, digits, underscores) or \"*\"",
            ),
        }
    }
    Some(if any {
        ApiAllowList::Any
    } else {
        ApiAllowList::Only(names)
    })
}

/// `service/command`, each part made of lowercase ASCII letters, digits and underscores, as
/// every Tencent API path is: one spelling per API, so no request escapes validation, limits
/// or its metric label by its case.
pub fn is_api_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MINIMAL;
    use crate::config::Config;

    #[test]
    fn allow_list_entries_are_checked() {
        let text = format!("{MINIMAL}[apis]\nallow = [\"a/b\", \"*\", \"../x\", 3]\n");
        let problems = Config::parse(&text).expect_err("invalid").0;
        assert_eq!(problems.len(), 2, "{problems:?}");
        let text = format!("{MINIMAL}[apis]\nallow = [\"*\"]\n");
        assert_eq!(Config::parse(&text).expect("valid").apis, ApiAllowList::Any);
    }

    #[test]
    fn api_names() {
        assert!(is_api_name("group_open_http_svc/get_group_counter"));
        for bad in ["", "a", "a/", "/b", "a/b/c", "a/b%2e", "a/..", "a b/c"] {
            assert!(!is_api_name(bad), "{bad}");
        }
    }

    #[test]
    fn api_names_are_lowercase_only() {
        assert!(is_api_name("group_open_http_svc/update_group_counter"));
        for bad in [
            "Group_Open_Http_Svc/Update_Group_Counter",
            "group_open_http_svc/Update_group_counter",
            "OPENIM/sendmsg",
        ] {
            assert!(!is_api_name(bad), "{bad}");
        }
        let text = format!("{MINIMAL}[apis]\nallow = [\"Openim/sendmsg\"]\n");
        let problems = Config::parse(&text).expect_err("invalid").0;
        assert_eq!(problems[0].key, "apis.allow");
        assert!(problems[0].why.contains("lowercase"), "{}", problems[0]);
    }
}
