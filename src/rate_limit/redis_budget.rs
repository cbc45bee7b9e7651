//! One config's budgets as the Redis limiter asks for them: the keys and GCRA numbers of each
//! check, and the waits learned under them. A reloaded config makes a new one; the states in
//! Redis convert themselves to new numbers at their next check (see `gcra.lua`).

use std::time::Duration;

use super::overrides::{Limits, Overrides};
use super::refused::Refused;
use crate::config::RateLimitConfig;

/// GCRA numbers for the script: t = 1/rate and tau = t * (burst - 1), in nanoseconds, as
/// governor computes them.
pub fn gcra_ns(per_second: u32, burst: u32) -> (u64, u64) {
    let t = (1_000_000_000 / u64::from(per_second.max(1))).max(1);
    (t, t * u64::from(burst.max(1) - 1))
}

/// One config's budgets in Redis: what each check asks, and the waits learned under them.
pub(super) struct Budget {
    /// `{chat-gateway:<sdkappid>}`: a hash tag, so that all of an app's keys sit in one slot
    /// of a Redis Cluster (the script touches several keys at once), and apps never share a key.
    pub prefix: String,
    /// Each GroupId's and API's budget.
    overrides: Overrides,
    /// GCRA t and tau (ns) of each group quota of `overrides`.
    group_numbers: Vec<(u64, u64)>,
    /// GCRA t and tau (ns) of each app quota of `overrides`.
    app_numbers: Vec<(u64, u64)>,
    /// Waits learned under these budgets (a new budget asks Redis anew: a learned wait may be
    /// longer than the new budget allows).
    pub refused: Refused,
}

impl Budget {
    pub fn new(config: &RateLimitConfig, sdkappid: u64, timeout: Duration) -> Self {
        let overrides = Overrides::new(config);
        let numbers = |quotas: &[Limits]| -> Vec<(u64, u64)> {
            quotas
                .iter()
                .map(|l| gcra_ns(l.per_second, l.burst))
                .collect()
        };
        let group_numbers = numbers(overrides.group_quotas());
        let app_numbers = numbers(overrides.app_quotas());
        // The longest interval of any budget bounds the waits kept (see `Refused::learn`).
        let longest = |n: &[(u64, u64)]| n.iter().map(|&(t, _)| t).max().unwrap_or(1);
        let (app_t, group_t) = (longest(&app_numbers), longest(&group_numbers));
        Budget {
            prefix: format!("{{chat-gateway:{sdkappid}}}"),
            refused: Refused::new(
                Duration::from_nanos(app_t),
                Duration::from_nanos(group_t),
                timeout,
            ),
            overrides,
            group_numbers,
            app_numbers,
        }
    }

    /// The script's numbers for this call: app t, app tau, group t, group tau (ns), each of
    /// the budget the lookup gives.
    pub fn numbers(&self, api: &str, group: Option<&str>) -> [u64; 4] {
        let quota = |n: &[(u64, u64)], i: usize| n.get(i).or(n.first()).copied();
        let (app_t, app_tau) = quota(&self.app_numbers, self.overrides.app(api)).unwrap_or((1, 0));
        let group = group.map_or(0, |g| self.overrides.group(g));
        let (group_t, group_tau) = quota(&self.group_numbers, group).unwrap_or((1, 0));
        [app_t, app_tau, group_t, group_tau]
    }

    /// The script's keys for this call: each state, then where its numbers are kept.
    pub fn keys(&self, api: &str, group: Option<&str>) -> Vec<String> {
        let key = |kind: &str, name: &str| format!("{}:{kind}:{name}", self.prefix);
        let mut keys = Vec::with_capacity(4);
        keys.extend([key("app", api), key("numbers:app", api)]);
        if let Some(group) = group {
            keys.extend([key("group", group), key("numbers:group", group)]);
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_governors() {
        // 2/s, burst 5: t = 500 ms, tau = 4 t.
        assert_eq!(gcra_ns(2, 5), (500_000_000, 2_000_000_000));
        assert_eq!(gcra_ns(200, 1), (5_000_000, 0));
    }
}
