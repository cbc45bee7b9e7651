//! Which v4 APIs callers may reach, and the bounded `api` label of each request.
//!
//! Only `/v4/{service}/{command}` paths made of letters, digits and underscores are ever
//! routed, so no caller-chosen path, `..`, or percent-encoding can reach the upstream.

use std::sync::{Arc, OnceLock};

use crate::config::{is_api_name, ApiAllowList};
use crate::metrics::{ApiMetrics, Metrics};
use crate::validated_apis::{self, ValidatedApi};

/// Distinct API names labelled as themselves under `allow = ["*"]`.
const MAX_OPEN_API_LABELS: usize = 100;

/// The label of requests for APIs that are not allowed.
pub const OTHER: &str = "other";

/// A routed request's API: cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct Api(Arc<ApiInfo>);

#[derive(Debug)]
pub struct ApiInfo {
    /// `service/command`; also the `api` label.
    pub name: Arc<str>,
    /// Set for the APIs in the registry, which get payload validation.
    pub validated: Option<&'static ValidatedApi>,
    /// A fixed 64-bit key for the name, computed once, so per-API state (the app rate
    /// limit) is found without hashing the name on every request.
    pub key: u64,
    /// This API's metric series, looked up once rather than per request.
    handles: OnceLock<ApiMetrics>,
}

impl std::ops::Deref for Api {
    type Target = ApiInfo;
    fn deref(&self) -> &ApiInfo {
        &self.0
    }
}

impl Api {
    /// The metric series labelled with this API, resolved on first use.
    pub fn metrics(&self, metrics: &Metrics) -> &ApiMetrics {
        self.0
            .handles
            .get_or_init(|| metrics.api_metrics(&self.0.name))
    }
}

/// The same key for the same name in every process run.
fn name_key(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// A request's label while it is under way (see [`ApiTable::label`]).
#[derive(Debug, Clone)]
pub struct Label {
    api: Api,
    /// An open API's name not registered yet when the request arrived.
    pending: Option<Box<str>>,
}

impl Label {
    fn of(api: Api) -> Self {
        Label { api, pending: None }
    }
}

pub struct ApiTable {
    any: bool,
    listed: Vec<Api>,
    /// APIs allowed only through `"*"`, each labelled as itself up to a cap.
    open: std::sync::RwLock<Vec<Api>>,
    /// Every other path, and open APIs past the cap.
    other: Api,
}

impl std::fmt::Debug for ApiTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTable")
            .field("any", &self.any)
            .field("listed", &self.listed.len())
            .finish()
    }
}

/// `service/command` out of `/v4/service/command`, if the path has exactly that shape.
pub fn api_of_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v4/")?;
    is_api_name(rest).then_some(rest)
}

impl ApiTable {
    pub fn new(allow: &ApiAllowList) -> Self {
        let (any, names): (bool, &[String]) = match allow {
            ApiAllowList::Any => (true, &[]),
            ApiAllowList::Only(names) => (false, names),
        };
        // The validated APIs are always labelled as themselves under "*".
        let mut listed: Vec<Api> = names.iter().map(|n| Api::new(n)).collect();
        if any {
            for name in validated_apis::names() {
                listed.push(Api::new(name));
            }
        }
        ApiTable {
            any,
            listed,
            open: std::sync::RwLock::new(Vec::new()),
            other: Api::new(OTHER),
        }
    }

    /// The table of a reloaded allow-list. Under `"*"` the APIs already labelled as themselves
    /// keep their place, so that reloads never take the labels past the cap.
    pub fn reloaded(&self, allow: &ApiAllowList) -> Self {
        let mut table = ApiTable::new(allow);
        if let (true, Ok(old)) = (table.any, self.open.read()) {
            let kept: Vec<Api> = (old.iter())
                .filter(|api| !table.listed.iter().any(|l| l.name == api.name))
                .cloned()
                .collect();
            if let Ok(open) = table.open.get_mut() {
                *open = kept;
            }
        }
        table
    }

    /// The API of an allowed path, or `None` when the path is not allowed.
    pub fn route(&self, path: &str) -> Option<Api> {
        let name = api_of_path(path)?;
        if let Some(api) = self.listed.iter().find(|a| &*a.name == name) {
            return Some(api.clone());
        }
        if !self.any {
            return None;
        }
        Some(self.open_api(name))
    }

    /// What a request is labelled with before it is routed: its API when listed or already
    /// known, else `other`. It never adds a name: only [`ApiTable::route`] does, once auth and
    /// the allow-list have accepted the request, so junk paths cannot use up the labels.
    pub fn label(&self, path: &str) -> Label {
        let Some(name) = api_of_path(path) else {
            return Label::of(self.other.clone());
        };
        if let Some(api) = self.known(name) {
            return Label::of(api);
        }
        Label {
            api: self.other.clone(),
            pending: self.any.then(|| name.into()),
        }
    }

    /// The label once the request is answered: a name the allow-list registered meanwhile
    /// is labelled as itself.
    pub fn settle(&self, label: &Label) -> Api {
        label
            .pending
            .as_deref()
            .and_then(|name| self.known(name))
            .unwrap_or_else(|| label.api.clone())
    }

    fn known(&self, name: &str) -> Option<Api> {
        if let Some(api) = self.listed.iter().find(|a| &*a.name == name) {
            return Some(api.clone());
        }
        let open = self.open.read().ok()?;
        open.iter().find(|a| &*a.name == name).cloned()
    }

    /// An API allowed through `"*"`; past the cap it shares the `other` label (and app limit).
    fn open_api(&self, name: &str) -> Api {
        if let Ok(open) = self.open.read() {
            if let Some(api) = open.iter().find(|a| &*a.name == name) {
                return api.clone();
            }
        }
        let Ok(mut open) = self.open.write() else {
            return self.other.clone();
        };
        if let Some(api) = open.iter().find(|a| &*a.name == name) {
            return api.clone();
        }
        if open.len() >= MAX_OPEN_API_LABELS {
            return self.other.clone();
        }
        let api = Api::new(name);
        open.push(api.clone());
        api
    }
}

impl Api {
    fn new(name: &str) -> Self {
        Api(Arc::new(ApiInfo {
            name: Arc::from(name),
            validated: validated_apis::find(name),
            key: name_key(name),
            handles: OnceLock::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_the_labels_given_under_any() {
        let table = ApiTable::new(&ApiAllowList::Any);
        for i in 0..MAX_OPEN_API_LABELS {
            assert!(table.route(&format!("/v4/svc/cmd_{i}")).is_some());
        }
        let reloaded = table.reloaded(&ApiAllowList::Any);
        let name = |path: &str| reloaded.route(path).map(|api| api.name.to_string());
        assert_eq!(name("/v4/svc/cmd_0").as_deref(), Some("svc/cmd_0"));
        assert_eq!(
            name("/v4/svc/new").as_deref(),
            Some(OTHER),
            "still past the cap"
        );
        let only = table.reloaded(&ApiAllowList::counters());
        assert!(only.route("/v4/svc/cmd_0").is_none(), "no longer allowed");
    }

    #[test]
    fn only_listed_apis_route() {
        let table = ApiTable::new(&ApiAllowList::counters());
        let api = table
            .route("/v4/group_open_http_svc/update_group_counter")
            .expect("allowed");
        assert_eq!(&*api.name, "group_open_http_svc/update_group_counter");
        assert_eq!(
            api.validated,
            Some(&validated_apis::update_group_counter::API)
        );
        for path in [
            "/v4/group_open_http_svc/create_group",
            "/v4/group_open_http_svc/update_group_counter/x",
            "/v4/group_open_http_svc/../update_group_counter",
            "/v4/group_open_http_svc/update%5Fgroup_counter",
            "/v3/group_open_http_svc/update_group_counter",
            "//v4/group_open_http_svc/update_group_counter",
            "/",
            "",
        ] {
            assert!(table.route(path).is_none(), "{path} routed");
            assert_eq!(&*table.settle(&table.label(path)).name, "other");
        }
    }

    #[test]
    fn star_allows_every_v4_api_with_bounded_labels() {
        let table = ApiTable::new(&ApiAllowList::Any);
        let api = table.route("/v4/openim/sendmsg").expect("allowed");
        assert_eq!(&*api.name, "openim/sendmsg");
        assert_eq!(api.validated, None);
        assert_eq!(
            table
                .route("/v4/group_open_http_svc/get_group_counter")
                .and_then(|a| a.validated),
            Some(&validated_apis::get_group_counter::API)
        );
        for i in 0..300 {
            table.route(&format!("/v4/svc/cmd{i}")).expect("allowed");
        }
        let labels: std::collections::HashSet<String> = (0..300)
            .map(|i| {
                let label = table.label(&format!("/v4/svc/cmd{i}"));
                table.settle(&label).name.to_string()
            })
            .collect();
        assert!(labels.len() <= MAX_OPEN_API_LABELS + 1);
        assert!(labels.contains("other"));
        assert!(table.route("/v4/svc/a.b").is_none());
        assert!(table.route("/v4/Svc/cmd").is_none());
    }

    #[test]
    fn labels_never_register_names() {
        let table = ApiTable::new(&ApiAllowList::Any);
        for i in 0..200 {
            let label = table.label(&format!("/v4/junk/j{i}"));
            assert_eq!(&*table.settle(&label).name, OTHER);
        }
        let label = table.label("/v4/openim/sendmsg");
        assert_eq!(&*table.settle(&label).name, OTHER);
        table.route("/v4/openim/sendmsg").expect("allowed");
        assert_eq!(&*table.settle(&label).name, "openim/sendmsg");
    }
}
