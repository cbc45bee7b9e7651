//! The local limiter's GCRA state, kept across a change of budgets (a config reload, a new
//! fleet share): a reload never refills a bucket.
//!
//! A governor limiter has one quota and counts time from its own start, so a new limiter
//! would start every key full. Instead every limiter of one [`KeptState`] reads and writes
//! the same cells through a [`View`] (governor's [`StateStore`]): each cell holds its
//! theoretical arrival time on the state's own clock, and the GCRA numbers (t, tau) it was
//! written under. A limiter with other numbers converts the cell keeping the tokens it has
//! left (never more than the new burst): a group that spent its burst has none after a
//! reload, and earns the next one at the new rate.

use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;
use governor::state::StateStore;

/// Keys here are already hashes: hashing them again would only cost time.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with this; fold anything else in all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// GCRA numbers in nanoseconds: t = 1/rate, tau = t * (burst - 1), as governor computes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbers {
    pub t: u64,
    pub tau: u64,
}

impl Numbers {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let t = (1_000_000_000 / u64::from(per_second.max(1))).max(1);
        Numbers {
            t,
            tau: t * u64::from(burst.max(1) - 1),
        }
    }
}

/// One key's state: its theoretical arrival time (ns on the state's clock) and the numbers
/// it was written under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub tat: u64,
    pub numbers: Numbers,
}

impl Cell {
    /// The arrival time under `numbers` that leaves the tokens this cell has left at `now`
    /// (at most the new burst; rounded down, so never one more).
    pub fn tat_under(&self, numbers: Numbers, now: u64) -> u64 {
        if self.numbers == numbers {
            return self.tat;
        }
        let old = self.numbers;
        let debt = self.tat.saturating_sub(now);
        // What is left of the burst, in the old numbers' time, then in the new one's.
        let left = (old.tau + old.t).saturating_sub(debt);
        let left = u128::from(left) * u128::from(numbers.t) / u128::from(old.t.max(1));
        let left = u64::try_from(left).unwrap_or(u64::MAX);
        now.saturating_add((numbers.tau + numbers.t).saturating_sub(left))
    }
}

type Cells = DashMap<u64, Cell, BuildHasherDefault<PassThrough>>;

/// Every key's state, and what keys mean, shared by all the limiters built over it.
pub struct KeptState<C: Clock> {
    pub(super) groups: Cells,
    pub(super) apps: Cells,
    /// Groups tracked; counted on insertion (so at most a few over the cap under a race), and
    /// recounted at each cleanup.
    pub(super) tracked: AtomicUsize,
    /// GroupIds are keyed by their hash under this per-process random key.
    pub(super) hasher: std::hash::RandomState,
    epoch: C::Instant,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for KeptState<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptState")
            .field("groups", &self.groups.len())
            .field("apps", &self.apps.len())
            .finish_non_exhaustive()
    }
}

impl<C: Clock> KeptState<C> {
    pub fn new(clock: C) -> Self {
        KeptState {
            groups: Cells::default(),
            apps: Cells::default(),
            tracked: AtomicUsize::new(0),
            hasher: std::hash::RandomState::new(),
            epoch: clock.now(),
            clock,
        }
    }

    /// Nanoseconds since the state was made.
    pub fn now(&self) -> u64 {
        self.clock.now().duration_since(self.epoch).as_u64()
    }

    /// Forgets the keys whose bucket is full again (as good as new); returns how many groups
    /// are still tracked.
    pub fn forget_full(&self) -> usize {
        let now = self.now();
        self.groups.retain(|_, cell| cell.tat > now);
        self.groups.shrink_to_fit();
        self.apps.retain(|_, cell| cell.tat > now);
        let tracked = self.groups.len();
        self.tracked.store(tracked, Ordering::Relaxed);
        tracked
    }
}

/// Which cells a view reads: the groups (under a cap, past which new groups share one
/// overflow key per budget) or the apps.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    Groups { cap: usize, overflow: u64 },
    Apps,
}

/// One limiter's window on the kept state: its numbers, and where its own clock starts.
pub struct View<C: Clock> {
    state: Arc<KeptState<C>>,
    side: Side,
    numbers: Numbers,
    /// The limiter's start on the state's clock. Read just before the limiter reads its own,
    /// so it is at most a few nanoseconds early: the limiter then sees time that much behind,
    /// stricter by that much, never more lenient.
    offset: u64,
}

impl<C: Clock> std::fmt::Debug for View<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("side", &self.side)
            .field("numbers", &self.numbers)
            .finish_non_exhaustive()
    }
}

impl<C: Clock> View<C> {
    /// A view for a limiter made right after this call.
    pub fn new(state: Arc<KeptState<C>>, side: Side, numbers: Numbers) -> Self {
        let offset = state.now();
        View {
            state,
            side,
            numbers,
            offset,
        }
    }

    fn cells(&self) -> &Cells {
        match self.side {
            Side::Groups { .. } => &self.state.groups,
            Side::Apps => &self.state.apps,
        }
    }

    /// The key itself, or the overflow key once the cap is reached by other groups.
    fn capped(&self, key: u64) -> u64 {
        let Side::Groups { cap, overflow } = self.side else {
            return key;
        };
        if self.state.groups.contains_key(&key) {
            key
        } else if self.state.tracked.load(Ordering::Relaxed) < cap {
            self.state.tracked.fetch_add(1, Ordering::Relaxed);
            key
        } else {
            overflow
        }
    }
}

impl<C: Clock> StateStore for View<C> {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let key = self.capped(*key);
        let store = |tat: u64| Cell {
            tat: tat.saturating_add(self.offset),
            numbers: self.numbers,
        };
        // The shard's lock is held while the decision is made, so that no other check of
        // the key comes between the read and the write.
        match self.cells().entry(key) {
            Entry::Occupied(mut cell) => {
                let tat = match cell.get() {
                    c if c.numbers == self.numbers => c.tat,
                    c => {
                        // Converted once, refused or not: from this check on the key
                        // refills at the new rate.
                        let tat = c.tat_under(self.numbers, self.state.now());
                        cell.insert(Cell {
                            tat,
                            numbers: self.numbers,
                        });
                        tat
                    }
                };
                let (decision, next) = f(Some(Nanos::from(tat.saturating_sub(self.offset))))?;
                cell.insert(store(next.as_u64()));
                Ok(decision)
            }
            Entry::Vacant(slot) => {
                let (decision, next) = f(None)?;
                slot.insert(store(next.as_u64()));
                Ok(decision)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_spent_burst_stays_spent_under_a_larger_one() {
        // 1/s, burst 5, all spent at 0: tat 5 s.
        let cell = Cell {
            tat: 5 * S,
            numbers: Numbers::new(1, 5),
        };
        let bigger = Numbers::new(1, 20);
        let tat = cell.tat_under(bigger, 0);
        // Nothing left: the next token comes after t.
        assert_eq!(tat - bigger.tau, S);
    }

    #[test]
    fn tokens_left_are_kept_and_capped_by_the_new_burst() {
        // 1/s, burst 5, two spent at 0: three left.
        let cell = Cell {
            tat: 2 * S,
            numbers: Numbers::new(1, 5),
        };
        let new = Numbers::new(2, 10);
        let tat = cell.tat_under(new, 0);
        // Three tokens of 0.5 s under the new numbers: 10 - 3 owed.
        assert_eq!(tat, 7 * S / 2);
        let smaller = Numbers::new(1, 2);
        assert_eq!(cell.tat_under(smaller, 0), 0, "full at the new burst");
        let unchanged = cell.tat_under(cell.numbers, 0);
        assert_eq!(unchanged, cell.tat);
    }

    #[test]
    fn a_full_bucket_stays_full() {
        let cell = Cell {
            tat: S,
            numbers: Numbers::new(1, 5),
        };
        let new = Numbers::new(10, 3);
        // At 4 s the old tat is long past: a full bucket, so nothing is owed.
        assert_eq!(cell.tat_under(new, 4 * S), 4 * S);
    }
}
