//! What Redis said about when each saturated key can pass again, kept by each gateway.
//!
//! GCRA's waits are exact: until a refused key's wait has passed, Redis refuses it again,
//! whoever asks; and a pass tells how long until the next call of its group and app can pass
//! (nothing while their burst is not spent). So the gateway answers those callers itself, with
//! the rest of the wait, and when the wait is over lets one caller per key ask Redis (the
//! others are refused for one interval while that check is out). A flood of refused callers
//! thus costs about one Redis check per key per freed token per gateway, and every gateway of
//! a saturated fleet asks when a token frees up, so which one gets it is decided by arrival.
//! (A local pre-check at the full rate, which this replaces, paced each gateway's checks on
//! its own clock, and the gateway whose pace followed Redis's took most of a shared budget.)

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Refusal, Scope};

/// Keys remembered at most per scope; past it nothing new is kept (Redis is asked instead).
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Redis refuses the key until then.
    Until(Instant),
    /// The wait is over and one caller's check is out since then.
    Asking(Instant),
}

type States = Mutex<HashMap<Box<str>, State>>;

/// Per scope: the keys' states and the interval between two of its calls.
#[derive(Debug)]
struct Keys {
    states: States,
    interval: Duration,
    /// The longest wait the budget allows: the interval, in whole microseconds as Redis
    /// rounds it (see [`Refused::learn`]).
    longest: Duration,
    scope: Scope,
}

/// The saturated keys of one gateway.
#[derive(Debug)]
pub struct Refused {
    /// By API name (the app key of each API).
    apps: Keys,
    /// By GroupId (one group key for all APIs).
    groups: Keys,
    /// A check out for longer than this is taken as lost: another caller may ask.
    asking_for: Duration,
}

/// What one check learned from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// It passed; the group's and the app's next call can pass after these waits.
    Passed {
        group_next: Duration,
        app_next: Duration,
    },
    Refused(Refusal),
}

impl Learned {
    /// What the caller whose check this was gets.
    pub fn result(self) -> Result<(), Refusal> {
        match self {
            Learned::Passed { .. } => Ok(()),
            Learned::Refused(refusal) => Err(refusal),
        }
    }
}

impl Refused {
    /// `app_interval` and `group_interval` are 1 / the rates; `asking_for` bounds a check.
    pub fn new(app_interval: Duration, group_interval: Duration, asking_for: Duration) -> Self {
        let keys = |interval: Duration, scope| Keys {
            states: Mutex::default(),
            interval,
            longest: Duration::from_micros(
                u64::try_from(interval.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX),
            ),
            scope,
        };
        Refused {
            apps: keys(app_interval, Scope::App),
            groups: keys(group_interval, Scope::Group),
            asking_for,
        }
    }

    /// `Some` refusal to answer at once, or `None`: ask Redis (and then call [`learn`]).
    ///
    /// [`learn`]: Refused::learn
    pub fn check(&self, api: &str, group: Option<&str>, now: Instant) -> Option<Refusal> {
        if let Some(refusal) = group.and_then(|g| self.groups.refused(g, now, self.asking_for)) {
            return Some(refusal);
        }
        if let Some(refusal) = self.apps.refused(api, now, self.asking_for) {
            return Some(refusal);
        }
        // Neither refuses: this caller asks for both.
        if let Some(group) = group {
            self.groups.start_asking(group, now);
        }
        self.apps.start_asking(api, now);
        None
    }

    /// Keeps what Redis answered at `answered` for this call's keys; returns it with every wait
    /// bounded by what the budget allows.
    ///
    /// A GCRA state is never more than a spent budget (tau + t) ahead of now, and a call can
    /// pass once it is at most tau ahead, so no true wait exceeds t, the interval. A longer one
    /// (a Redis host whose clock stepped back: the states hold absolute times) would otherwise
    /// shut a key, or an API for the whole app, until the gateway restarts: past t the gateway
    /// asks Redis again instead.
    pub fn learn(
        &self,
        api: &str,
        group: Option<&str>,
        answered: Instant,
        learned: Learned,
    ) -> Learned {
        let learned = self.bounded(learned);
        match learned {
            // A refusal says nothing of the other key (the script stops at the first that
            // refuses, and a refusal spends nothing): its check, if this was it, is over.
            Learned::Refused(refusal) => match (refusal.scope, group) {
                (Scope::Group, Some(group)) => {
                    self.groups.wait(group, answered, refusal.retry_after);
                    self.apps.done_asking(api);
                }
                (Scope::Group, None) => self.apps.done_asking(api),
                (Scope::App, _) => {
                    if let Some(group) = group {
                        self.groups.done_asking(group);
                    }
                    self.apps.wait(api, answered, refusal.retry_after);
                }
            },
            Learned::Passed {
                group_next,
                app_next,
            } => {
                if let Some(group) = group {
                    self.groups.wait(group, answered, group_next);
                }
                self.apps.wait(api, answered, app_next);
            }
        }
        learned
    }

    fn bounded(&self, learned: Learned) -> Learned {
        match learned {
            Learned::Passed {
                group_next,
                app_next,
            } => Learned::Passed {
                group_next: group_next.min(self.groups.longest),
                app_next: app_next.min(self.apps.longest),
            },
            Learned::Refused(refusal) => {
                let longest = match refusal.scope {
                    Scope::Group => self.groups.longest,
                    Scope::App => self.apps.longest,
                };
                Learned::Refused(Refusal {
                    retry_after: refusal.retry_after.min(longest),
                    group_spent: false,
                    ..refusal
                })
            }
        }
    }

    /// Forgets what has run out; returns how many keys are still kept.
    pub fn cleanup(&self, now: Instant) -> usize {
        [&self.apps, &self.groups]
            .into_iter()
            .map(|keys| {
                let mut states = lock(&keys.states);
                states.retain(|_, state| match *state {
                    State::Until(until) => until > now,
                    State::Asking(since) => now.saturating_duration_since(since) < self.asking_for,
                });
                states.len()
            })
            .sum()
    }
}

impl Keys {
    /// The refusal this key gives now, if any.
    fn refused(&self, key: &str, now: Instant, asking_for: Duration) -> Option<Refusal> {
        let states = lock(&self.states);
        if states.is_empty() {
            return None;
        }
        match *states.get(key)? {
            State::Until(until) if until > now => Some(self.refusal(until - now)),
            // Another caller's check is out: at best it takes the token, and the next one
            // frees an interval later.
            State::Asking(since) if now.saturating_duration_since(since) < asking_for => {
                Some(self.refusal(self.interval))
            }
            _ => None,
        }
    }

    /// A kept key whose wait is over: this caller's check is out now.
    fn start_asking(&self, key: &str, now: Instant) {
        let mut states = lock(&self.states);
        if let Some(state) = states.get_mut(key) {
            *state = State::Asking(now);
        }
    }

    /// The check that was out for this key learned nothing of it.
    fn done_asking(&self, key: &str) {
        let mut states = lock(&self.states);
        if matches!(states.get(key), Some(State::Asking(_))) {
            states.remove(key);
        }
    }

    /// The key's next call can pass `wait` after `from`: nothing kept when that is now.
    fn wait(&self, key: &str, from: Instant, wait: Duration) {
        let mut states = lock(&self.states);
        if wait.is_zero() {
            states.remove(key);
        } else if states.len() < MAX_KEYS || states.contains_key(key) {
            states.insert(key.into(), State::Until(from + wait));
        }
    }

    fn refusal(&self, wait: Duration) -> Refusal {
        Refusal {
            scope: self.scope,
            retry_after: wait,
            group_spent: false,
        }
    }
}

fn lock(states: &States) -> MutexGuard<'_, HashMap<Box<str>, State>> {
    // Nothing panics while holding the lock; should it, the map is still consistent.
    states.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP_T: Duration = Duration::from_millis(100);
    const GROUP_T: Duration = Duration::from_millis(50);

    fn refused() -> Refused {
        Refused::new(APP_T, GROUP_T, Duration::from_millis(500))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn passed(group_next: Duration, app_next: Duration) -> Learned {
        Learned::Passed {
            group_next,
            app_next,
        }
    }

    fn refusal(scope: Scope, wait: Duration) -> Learned {
        Learned::Refused(Refusal {
            scope,
            retry_after: wait,
            group_spent: false,
        })
    }

    #[test]
    fn unsaturated_keys_always_ask() {
        let r = refused();
        let t0 = Instant::now();
        assert_eq!(r.check("a/b", Some("g"), t0), None);
        r.learn("a/b", Some("g"), t0, passed(Duration::ZERO, Duration::ZERO));
        assert_eq!(r.check("a/b", Some("g"), t0), None);
        assert_eq!(r.cleanup(t0), 0, "nothing kept for keys with burst left");
    }

    #[test]
    fn a_refusal_holds_for_its_wait_then_one_caller_asks() {
        let r = refused();
        let t0 = Instant::now();
        r.learn("a/b", Some("g1"), t0, refusal(Scope::App, ms(100)));
        let refused_for = |group, at| r.check("a/b", Some(group), t0 + ms(at));
        assert_eq!(
            refused_for("g2", 40).map(|x| (x.scope, x.retry_after)),
            Some((Scope::App, ms(60))),
            "an app refusal holds for every group of the API"
        );
        assert_eq!(
            r.check("a/c", Some("g2"), t0 + ms(40)),
            None,
            "not for another API"
        );
        assert_eq!(
            refused_for("g2", 100),
            None,
            "over at its end: this caller asks"
        );
        assert_eq!(
            refused_for("g3", 101).map(|x| x.retry_after),
            Some(APP_T),
            "while that check is out, others wait one interval"
        );
        r.learn("a/b", Some("g2"), t0 + ms(102), refusal(Scope::App, ms(8)));
        assert_eq!(
            refused_for("g3", 105).map(|x| x.retry_after),
            Some(ms(5)),
            "the new wait"
        );
        assert_eq!(refused_for("g3", 110), None);
        assert_eq!(
            refused_for("g4", 700),
            None,
            "a check out for longer than it may take is taken as lost"
        );
    }

    #[test]
    fn a_pass_tells_when_the_next_call_can_pass() {
        let r = refused();
        let t0 = Instant::now();
        r.learn("a/b", Some("g"), t0, passed(ms(30), Duration::ZERO));
        assert_eq!(
            r.check("x/y", Some("g"), t0 + ms(10))
                .map(|x| (x.scope, x.retry_after)),
            Some((Scope::Group, ms(20))),
            "a group's wait holds for the group in every API"
        );
        assert_eq!(
            r.check("a/b", Some("h"), t0 + ms(10)),
            None,
            "the app had burst left"
        );
    }

    #[test]
    fn a_group_refusal_ends_the_apps_check() {
        let r = refused();
        let t0 = Instant::now();
        r.learn("a/b", Some("g"), t0, refusal(Scope::App, ms(10)));
        assert_eq!(
            r.check("a/b", Some("g"), t0 + ms(10)),
            None,
            "asks for the app"
        );
        assert_eq!(
            r.check("a/b", Some("h"), t0 + ms(10))
                .map(|x| x.retry_after),
            Some(APP_T),
            "while it is out"
        );
        r.learn("a/b", Some("g"), t0 + ms(11), refusal(Scope::Group, ms(40)));
        assert_eq!(
            r.check("a/b", Some("h"), t0 + ms(12)),
            None,
            "the script never reached the app: another caller may ask"
        );
        assert_eq!(
            r.check("a/b", Some("g"), t0 + ms(12)).map(|x| x.scope),
            Some(Scope::Group)
        );
    }

    #[test]
    fn no_wait_outlasts_what_the_budget_allows() {
        let r = refused();
        let t0 = Instant::now();
        // What Redis answers for a state written before its host's clock stepped back 104 days.
        let absurd = Duration::from_micros(9_000_000_000_000);
        assert_eq!(
            r.learn("a/b", Some("g"), t0, refusal(Scope::Group, absurd)),
            refusal(Scope::Group, GROUP_T),
            "the caller's Retry-After is bounded too"
        );
        assert_eq!(
            r.check("x/y", Some("g"), t0 + GROUP_T - ms(1))
                .map(|x| x.scope),
            Some(Scope::Group)
        );
        assert_eq!(
            r.check("x/y", Some("g"), t0 + GROUP_T),
            None,
            "Redis is asked again after one interval"
        );
        let t1 = t0 + GROUP_T;
        r.learn("x/y", Some("g"), t1, refusal(Scope::App, absurd));
        assert_eq!(r.check("x/y", Some("h"), t1 + APP_T), None, "the app too");
        r.learn("a/b", Some("k"), t1, passed(absurd, absurd));
        assert_eq!(r.check("a/b", Some("h"), t1 + APP_T), None);
        assert_eq!(r.check("c/d", Some("k"), t1 + GROUP_T), None);
        // Redis rounds waits up to whole microseconds: so does the bound.
        let third = Refused::new(Duration::from_nanos(333_333_333), GROUP_T, ms(500));
        assert_eq!(
            third.learn("a/b", None, t0, refusal(Scope::App, absurd)),
            refusal(Scope::App, Duration::from_micros(333_334))
        );
    }

    #[test]
    fn an_app_refusal_ends_the_groups_check_and_keys_kept_are_bounded() {
        let r = refused();
        let t0 = Instant::now();
        r.learn("a/b", Some("g"), t0, refusal(Scope::Group, ms(20)));
        assert_eq!(r.check("a/b", Some("g"), t0 + ms(20)), None, "asks");
        r.learn("a/b", Some("g"), t0 + ms(21), refusal(Scope::App, ms(5)));
        assert_eq!(
            r.check("a/b", Some("g"), t0 + ms(22)).map(|x| x.scope),
            Some(Scope::App),
            "refused for the app; the group's check is over"
        );
        assert_eq!(r.check("a/b", Some("g"), t0 + ms(26)), None);
        let big = refused();
        for i in 0..MAX_KEYS + 10 {
            big.learn(
                "a/b",
                Some(&format!("g{i}")),
                t0,
                refusal(Scope::Group, ms(1000)),
            );
        }
        assert_eq!(big.cleanup(t0), MAX_KEYS);
        assert_eq!(big.cleanup(t0 + ms(2000)), 0);
    }
}
