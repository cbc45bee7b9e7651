//! A group's line for its tokens. Batches of increments and reads that must wait for the
//! group's next token ask the limiter one at a time, in the order they came, so that neither
//! starves the other; each waits at most until its callers' `max_wait`.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::group::{Registry, Waiter};
use super::layer::DriverCtx;
use crate::api::Api;
use crate::rate_limit::{RateLimiter, Refusal, Scope};

/// The callers waiting behind one place in the line.
pub(super) trait Waiters {
    /// The earliest `max_wait` end among them; `None` when nobody is left.
    fn earliest(&self) -> Option<Instant>;
    /// Answers those whose `max_wait` ends at or before `before` (refused for `refusal`, or
    /// as busy without one); whether any are left.
    fn expire(&mut self, before: Instant, refusal: Option<Refusal>) -> bool;
    /// Whether one of them joined with its group's token already taken (its own check was
    /// refused by the app's budget after the local limiter took the group's).
    fn brought_group_token(&mut self) -> bool {
        false
    }
}

/// How a wait for tokens ended.
#[derive(Debug)]
pub(super) enum Tokens {
    /// The group's and the app's tokens are taken: send.
    Taken,
    /// Every caller was answered (their `max_wait` ran out): send nothing.
    Gone,
    /// The app's budget refused, and the place was to give up on that ([`OnApp::Refuse`]).
    App(Refusal),
}

/// What an app refusal means to a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnApp {
    /// Wait for the app's token alone (a batch: its group token is spent by then).
    Wait,
    /// Give up at once (a read: the contract answers it 60007 at once).
    Refuse,
}

/// Waits for one group token (unless `group_token` says it is already taken) and one app
/// token, behind everyone who asked for the group's before.
pub(super) async fn take_tokens(
    registry: &Registry,
    limiter: &dyn RateLimiter,
    api: &Api,
    group: &str,
    mut group_token: bool,
    on_app: OnApp,
    waiters: &mut impl Waiters,
) -> Tokens {
    let place = Place::join(registry, group);
    loop {
        let Some(deadline) = waiters.earliest() else {
            return Tokens::Gone;
        };
        if !place.first(deadline).await {
            if !waiters.expire(Instant::now(), None) {
                return Tokens::Gone;
            }
            continue;
        }
        group_token |= waiters.brought_group_token();
        match limiter.check(api, (!group_token).then_some(group)).await {
            Ok(()) => return Tokens::Taken,
            Err(refusal) => {
                if refusal.scope == Scope::App && on_app == OnApp::Refuse {
                    return Tokens::App(refusal);
                }
                // When the app refused after the group's token was taken, wait for the app's
                // alone from now on, so that one call never spends two of its group's tokens;
                // when nothing was taken (Redis), the group's is still to be had.
                group_token |= refusal.group_spent;
                let retry_at = Instant::now() + refusal.retry_after;
                // Callers whose max_wait ends before the token can come are answered now.
                if !waiters.expire(retry_at, Some(refusal)) {
                    return Tokens::Gone;
                }
                tokio::time::sleep_until(retry_at).await;
            }
        }
    }
}

/// A place in a group's line, left when dropped (tokens taken, given up, or the caller's
/// future dropped).
struct Place<'a> {
    registry: &'a Registry,
    group: &'a str,
    ticket: u64,
    moved: Arc<Notify>,
}

impl<'a> Place<'a> {
    fn join(registry: &'a Registry, group: &'a str) -> Self {
        let (ticket, moved) = registry.join_line(group);
        Place {
            registry,
            group,
            ticket,
            moved,
        }
    }

    /// Waits until this place is first, or until `deadline`; whether it is first.
    async fn first(&self, deadline: Instant) -> bool {
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if self.registry.first_in_line(self.group, self.ticket) {
                return true;
            }
            tokio::select! {
                _ = &mut moved => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return self.registry.first_in_line(self.group, self.ticket);
                }
            }
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.registry.leave_line(self.group, self.ticket);
    }
}

/// Callers held by a driver, out of the registry: a part of a batch sent again, the readers
/// of one shared read.
pub(super) struct Held<'a, W> {
    pub ctx: &'a DriverCtx,
    pub list: Vec<W>,
}

impl<W: Waiter> Waiters for Held<'_, W> {
    fn earliest(&self) -> Option<Instant> {
        self.list
            .iter()
            .filter(|w| !w.hung_up())
            .map(Waiter::deadline)
            .min()
    }

    fn expire(&mut self, before: Instant, refusal: Option<Refusal>) -> bool {
        let (gone, stay): (Vec<W>, Vec<W>) = std::mem::take(&mut self.list)
            .into_iter()
            .partition(|w| w.deadline() <= before || w.hung_up());
        self.list = stay;
        self.ctx.refuse(gone, refusal);
        !self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::api::ApiTable;
    use crate::config::ApiAllowList;
    use crate::rate_limit::Decision;

    /// Passes every check and records whether each asked for the group's token.
    #[derive(Default)]
    struct Recording(Mutex<Vec<bool>>);

    impl RateLimiter for Recording {
        fn check(&self, _api: &Api, group: Option<&str>) -> Decision {
            if let Ok(mut asked) = self.0.lock() {
                asked.push(group.is_some());
            }
            Decision::now(Ok(()))
        }
        fn cleanup(&self) -> usize {
            0
        }
        fn tracked_groups(&self) -> usize {
            0
        }
    }

    /// One caller that may have brought its group's token.
    struct One {
        deadline: Instant,
        brought: bool,
    }

    impl Waiters for One {
        fn earliest(&self) -> Option<Instant> {
            Some(self.deadline)
        }
        fn expire(&mut self, before: Instant, _refusal: Option<Refusal>) -> bool {
            self.deadline > before
        }
        fn brought_group_token(&mut self) -> bool {
            std::mem::take(&mut self.brought)
        }
    }

    async fn group_tokens_asked(brought: bool) -> Vec<bool> {
        let registry = Registry::new();
        let limiter = Recording::default();
        let api = ApiTable::new(&ApiAllowList::counters())
            .route("/v4/group_open_http_svc/update_group_counter")
            .expect("allowed");
        let mut one = One {
            deadline: Instant::now() + Duration::from_secs(5),
            brought,
        };
        let tokens = take_tokens(&registry, &limiter, &api, "g", false, OnApp::Wait, &mut one);
        assert!(matches!(tokens.await, Tokens::Taken));
        let asked = limiter.0.lock().map(|a| a.clone()).unwrap_or_default();
        asked
    }

    #[tokio::test]
    async fn a_batch_whose_caller_brought_the_group_token_asks_for_the_app_token_alone() {
        assert_eq!(group_tokens_asked(false).await, vec![true]);
        assert_eq!(
            group_tokens_asked(true).await,
            vec![false],
            "the group's token was spent by the caller's own check: one call, one group token"
        );
    }
}
