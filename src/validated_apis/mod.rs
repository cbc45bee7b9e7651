//! The registry of validated APIs: each one's name, payload validator, group and idempotency.
//! Adding an API = one module in this folder and one line in [`REGISTRY`].

#[cfg(test)]
pub mod check_widget;
pub mod delete_group_counter;
mod facts;
pub mod get_group_counter;
pub mod update_group_counter;

pub use facts::{CounterUpdate, PayloadFacts};

use crate::validation::Rejection;

/// Every validated API. The default allow-list, payload validation, the emulator's routes and
/// the fuzz target all read this list.
pub static REGISTRY: &[&ValidatedApi] = &[
    &get_group_counter::API,
    &update_group_counter::API,
    &delete_group_counter::API,
    #[cfg(test)]
    &check_widget::API,
];

/// An API whose payload the gateway checks before forwarding, as it declares itself.
#[derive(Debug)]
pub struct ValidatedApi {
    /// `service/command`: the allow-list entry and the `api` label.
    pub name: &'static str,
    /// The request path, `/v4/` + `name`.
    pub path: &'static str,
    /// The body member that names the request's group; `validate` puts its value in
    /// [`PayloadFacts::group_id`], the key of the group rate limit.
    pub group_member: &'static str,
    /// Checks the body; on success, what the rest of the pipeline may know about it (its
    /// group among them).
    pub validate: fn(&[u8]) -> Result<PayloadFacts, Rejection>,
    /// Whether sending this request twice leaves the same state as sending it once.
    pub idempotent: fn(&PayloadFacts) -> bool,
    /// How concurrent calls of this API may share upstream calls.
    pub coalesce: Coalescing,
    /// Allowed when the config has no `[apis] allow` (the contract's default: the counter APIs).
    pub allowed_by_default: bool,
}

/// How concurrent calls of one API may share upstream calls (`[coalesce]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coalescing {
    /// Each call is sent as it came.
    Never,
    /// A group's counter increments are merged into one call (`coalesce.enabled`).
    CounterIncrements,
    /// A group's identical reads share one call (`coalesce.reads`), and a read of keys a
    /// waiting batch of increments sets is answered from it.
    CounterReads,
}

impl ValidatedApi {
    /// Checks `body` against this API's payload rules.
    pub fn validate(&self, body: &[u8]) -> Result<PayloadFacts, Rejection> {
        (self.validate)(body)
    }

    /// Whether a request with these facts may be sent twice without changing the outcome.
    pub fn is_idempotent(&self, facts: &PayloadFacts) -> bool {
        (self.idempotent)(facts)
    }
}

/// Names are unique in the registry, so they identify an entry.
impl PartialEq for ValidatedApi {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for ValidatedApi {}

/// The registry entry named `service_command`, if any.
pub fn find(service_command: &str) -> Option<&'static ValidatedApi> {
    REGISTRY
        .iter()
        .copied()
        .find(|api| api.name == service_command)
}

/// The `service/command` names of every validated API, in registry order.
pub fn names() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|api| api.name)
}

/// The names allowed when the config lists none.
pub fn allowed_by_default() -> impl Iterator<Item = &'static str> {
    REGISTRY
        .iter()
        .filter(|api| api.allowed_by_default)
        .map(|api| api.name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::is_api_name;
    use crate::validation::Mode;

    #[test]
    fn entries_are_well_formed_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for api in REGISTRY {
            assert!(is_api_name(api.name), "{}", api.name);
            assert_eq!(api.path, format!("/v4/{}", api.name));
            assert!(seen.insert(api.name), "{} listed twice", api.name);
        }
    }

    #[test]
    fn each_api_names_its_group_by_its_declared_member() {
        for api in REGISTRY {
            let body = format!(
                r#"{{"{}":"g-1","GroupCounter":[{{"Key":"k","Value":1}}]}}"#,
                api.group_member
            );
            let facts = api.validate(body.as_bytes()).unwrap();
            assert_eq!(&*facts.group_id, "g-1", "{}", api.name);
        }
    }

    #[test]
    fn find_by_exact_name_only() {
        for name in [
            "group_open_http_svc/get_group_counter",
            "group_open_http_svc/update_group_counter",
            "group_open_http_svc/delete_group_counter",
        ] {
            assert_eq!(find(name).map(|api| api.name), Some(name));
        }
        for other in [
            "",
            "group_open_http_svc/get_group_info",
            "group_open_http_svc/get_group_counter/",
            "/group_open_http_svc/get_group_counter",
            "GROUP_OPEN_HTTP_SVC/GET_GROUP_COUNTER",
            "v4/group_open_http_svc/update_group_counter",
        ] {
            assert!(find(other).is_none(), "{other}");
        }
        for api in REGISTRY {
            assert_eq!(find(api.name), Some(*api));
        }
    }

    #[test]
    fn idempotency() {
        let update = |mode: Option<&str>| {
            let mode = mode.map_or(String::new(), |m| format!(r#","Mode":"{m}""#));
            let body =
                format!(r#"{{"GroupId":"g","GroupCounter":[{{"Key":"k","Value":1}}]{mode}}}"#);
            let facts = update_group_counter::API.validate(body.as_bytes()).unwrap();
            update_group_counter::API.is_idempotent(&facts)
        };
        assert!(update(Some("Set")));
        assert!(!update(Some("Increase")));
        assert!(!update(Some("Decrease")));
        // Tencent's documentation gives no default Mode: a resend is not known to be safe.
        assert!(!update(None));
        for api in [&get_group_counter::API, &delete_group_counter::API] {
            let facts = api.validate(br#"{"GroupId":"g"}"#).unwrap();
            assert!(api.is_idempotent(&facts), "{}", api.name);
        }
        let facts = update_group_counter::API
            .validate(br#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1}],"Mode":"Set"}"#)
            .unwrap();
        assert_eq!(facts.update.map(|u| u.mode), Some(Some(Mode::Set)));
    }

    #[test]
    fn update_facts_keep_mode_and_whether_only_known_members_are_present() {
        let facts = |body: &str| update_group_counter::API.validate(body.as_bytes()).unwrap();
        let plain = facts(
            r#"{"GroupId":"g\u0031","GroupCounter":[{"Key":"likes","Value":1},{"Value":-3,"Key":"vi\u0065ws"}],"Mode":"Increase"}"#,
        );
        assert_eq!(&*plain.group_id, "g1");
        let update = plain.update.unwrap();
        assert_eq!(update.mode, Some(Mode::Increase));
        assert!(update.plain);
        let extremes = facts(&format!(
            r#"{{"GroupId":"g","GroupCounter":[{{"Key":"a","Value":{}}},{{"Key":"b","Value":{}}}]}}"#,
            i64::MIN,
            i64::MAX
        ));
        let update = extremes.update.unwrap();
        assert_eq!(update.mode, None);
        assert!(update.plain);
        for extra in [
            r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1}],"Mode":"Increase","Note":1}"#,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1,"Note":1}],"Mode":"Increase"}"#,
        ] {
            let update = facts(extra).update.unwrap();
            assert!(!update.plain, "{extra}");
        }
        let get = get_group_counter::API
            .validate(br#"{"GroupId":"g","GroupCounterKeys":["k"]}"#)
            .unwrap();
        assert_eq!(&*get.group_id, "g");
        assert_eq!(get.update, None);
    }
}
