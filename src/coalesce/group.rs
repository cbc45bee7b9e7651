//! Per-group state: the batches of one group waiting to be sent, how many of its increment
//! calls are in flight, and its shared reads. A group's entry lives only while it has something
//! in flight or waiting, so a flood of distinct groups leaves nothing behind.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::Request;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::merge::{Increment, Merge, ReadKey};
use crate::api::Api;
use crate::error::GatewayError;
use crate::exchange::GatewayResponse;

pub type Answer = Result<GatewayResponse, GatewayError>;

/// Independent locks, so that unrelated groups rarely wait on each other.
const SHARDS: usize = 16;

/// One caller waiting in a write batch.
#[derive(Debug)]
pub struct Member {
    pub inc: Increment,
    /// The caller's body as it came: a batch of one sends exactly these bytes.
    pub body: Bytes,
    /// When its `max_wait` runs out.
    pub deadline: Instant,
    pub tx: oneshot::Sender<Answer>,
    /// Its own check found the app's budget spent after taking the group's token (the local
    /// limiter takes the group's first): the batch it joins uses that token instead of
    /// taking another, so a call never costs its group two.
    pub brought_group_token: bool,
    /// The caller's request span, when sampled.
    pub trace: Option<crate::traces::Traced>,
}

/// A read of keys that a waiting batch sets, answered from that batch's answer. It gets
/// `None` when it must be sent on its own instead (the batch went unsent, or failed).
#[derive(Debug)]
pub struct Rider {
    /// The keys it asked for, in its order.
    pub keys: Vec<String>,
    /// The read's own API (its answer is counted under it).
    pub api: Api,
    pub deadline: Instant,
    pub tx: oneshot::Sender<Option<Answer>>,
}

/// One caller that waits until its `max_wait` runs out.
pub(super) trait Waiter {
    fn deadline(&self) -> Instant;
    fn hung_up(&self) -> bool;
    /// Answers it with `error` (it was never sent).
    fn refuse(self, error: GatewayError);
}

impl Waiter for Member {
    fn deadline(&self) -> Instant {
        self.deadline
    }
    fn hung_up(&self) -> bool {
        self.tx.is_closed()
    }
    fn refuse(self, error: GatewayError) {
        let _ = self.tx.send(Err(error));
    }
}

impl Waiter for Reader {
    fn deadline(&self) -> Instant {
        self.deadline
    }
    fn hung_up(&self) -> bool {
        self.tx.is_closed()
    }
    fn refuse(self, error: GatewayError) {
        let _ = self.tx.send(Err(error));
    }
}

/// A batch still open to joiners.
#[derive(Debug)]
struct OpenBatch {
    id: u64,
    merge: Merge,
    members: Vec<Member>,
    riders: Vec<Rider>,
    /// The first caller's request head (method, path, headers, extensions): the batch's own.
    template: http::request::Parts,
}

impl OpenBatch {
    fn earliest_deadline(&self) -> Option<Instant> {
        self.members.iter().map(|m| m.deadline).min()
    }
}

/// A batch that got its token: no longer joinable, about to be sent.
#[derive(Debug)]
pub struct Sealed {
    pub merge: Merge,
    pub members: Vec<Member>,
    pub riders: Vec<Rider>,
    pub template: http::request::Parts,
}

/// A caller waiting for a shared read, until its `max_wait` runs out.
#[derive(Debug)]
pub struct Reader {
    pub tx: oneshot::Sender<Answer>,
    pub deadline: Instant,
}

#[derive(Debug)]
struct ReadLane {
    key: ReadKey,
    /// Callers for the next shared read (the one in flight already has its own).
    waiting: Vec<Reader>,
    template: Option<Request<Bytes>>,
}

#[derive(Debug)]
struct GroupState {
    /// Increment calls of this group sent and not yet answered.
    calls: usize,
    open: Vec<OpenBatch>,
    /// Woken when a call returns or a batch fills up; made when a batch first waits on it, so
    /// a lone call of a quiet group costs none.
    turn: Option<Arc<Notify>>,
    reads: Vec<ReadLane>,
    /// Batches and reads waiting for the group's next token, in the order they asked.
    line: VecDeque<u64>,
    /// Woken when the line moves.
    line_moved: Option<Arc<Notify>>,
}

impl GroupState {
    fn new() -> Self {
        GroupState {
            calls: 0,
            open: Vec::new(),
            turn: None,
            reads: Vec::new(),
            line: VecDeque::new(),
            line_moved: None,
        }
    }

    fn wake(&self) {
        if let Some(turn) = &self.turn {
            turn.notify_waiters();
        }
    }

    fn is_idle(&self) -> bool {
        self.calls == 0 && self.open.is_empty() && self.reads.is_empty() && self.line.is_empty()
    }
}

/// What a waiting batch should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Nothing of the group is in flight (or the batch is full): take a token and go.
    Go,
    /// Wait for the group's call in flight, at most until this caller's deadline.
    Wait(Instant),
    /// The batch is gone (every caller answered).
    Gone,
}

type Shard = Mutex<HashMap<Box<str>, GroupState>>;

/// Every busy group's state.
#[derive(Debug)]
pub struct Registry {
    shards: Box<[Shard]>,
    hasher: std::hash::RandomState,
    next_id: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

/// What a reader's arrival did.
#[derive(Debug)]
pub enum ReadJoin {
    /// A new shared read, which the caller must drive.
    New,
    /// It joined the next shared read.
    Joined,
    /// The next shared read has its most callers: send this one alone.
    Full(Box<Request<Bytes>>),
}

/// What a write caller's arrival did.
#[derive(Debug)]
pub enum Joined {
    /// It joined a batch that is already driven.
    Existing,
    /// It started a new batch, which the caller must drive.
    New { id: u64, turn: Arc<Notify> },
}

impl Registry {
    pub fn new() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::hash::RandomState::new(),
            next_id: AtomicU64::new(1),
        }
    }

    fn shard(&self, group: &str) -> MutexGuard<'_, HashMap<Box<str>, GroupState>> {
        let i = (self.hasher.hash_one(group) as usize) % self.shards.len();
        // Nothing panics while holding the lock; should it, the map is still consistent.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Groups with something in flight or waiting.
    #[cfg(test)]
    pub fn busy_groups(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Puts a caller's increment into the group's first open batch that takes it, else into a
    /// new batch after the others.
    pub fn join(
        &self,
        group: &str,
        member: Member,
        parts: http::request::Parts,
        max_callers: usize,
    ) -> Joined {
        let mut shard = self.shard(group);
        let state = shard.entry(group.into()).or_insert_with(GroupState::new);
        for batch in &mut state.open {
            if batch.merge.try_join(&member.inc).is_ok() {
                batch.members.push(member);
                if batch.merge.is_full() {
                    state.wake();
                }
                return Joined::Existing;
            }
        }
        let mut merge = Merge::new(member.inc.mode, max_callers);
        // A fresh batch takes any single valid increment.
        let _ = merge.try_join(&member.inc);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        state.open.push(OpenBatch {
            id,
            merge,
            members: vec![member],
            riders: Vec::new(),
            template: parts,
        });
        Joined::New {
            id,
            turn: state.turn.get_or_insert_with(Default::default).clone(),
        }
    }

    /// Whether a caller of batch `id` brought its group's token (see
    /// [`Member::brought_group_token`]); taken once: one call needs one token.
    pub fn take_brought_group_token(&self, group: &str, id: u64) -> bool {
        let mut shard = self.shard(group);
        let Some(batch) = shard
            .get_mut(group)
            .and_then(|state| state.open.iter_mut().find(|b| b.id == id))
        else {
            return false;
        };
        let mut brought = false;
        for m in batch.members.iter_mut().filter(|m| m.brought_group_token) {
            m.brought_group_token = false;
            brought = true;
        }
        brought
    }

    /// The earliest `max_wait` end among batch `id`'s callers; `None` once it is gone.
    pub fn deadline(&self, group: &str, id: u64) -> Option<Instant> {
        let shard = self.shard(group);
        shard
            .get(group)?
            .open
            .iter()
            .find(|b| b.id == id)?
            .earliest_deadline()
    }

    /// Whether batch `id` may go now.
    pub fn turn(&self, group: &str, id: u64) -> Turn {
        let shard = self.shard(group);
        let Some(state) = shard.get(group) else {
            return Turn::Gone;
        };
        let Some(batch) = state.open.iter().find(|b| b.id == id) else {
            return Turn::Gone;
        };
        match batch.earliest_deadline() {
            None => Turn::Gone,
            Some(_) if state.calls == 0 || batch.merge.is_full() => Turn::Go,
            Some(deadline) => Turn::Wait(deadline),
        }
    }

    /// Takes out of batch `id` the callers whose deadline is at or before `before` and those
    /// who hung up; returns them and how many stay. A batch left empty is removed.
    pub fn expire(&self, group: &str, id: u64, before: Instant) -> (Vec<Member>, usize) {
        let mut shard = self.shard(group);
        let Some(state) = shard.get_mut(group) else {
            return (Vec::new(), 0);
        };
        let Some(at) = state.open.iter().position(|b| b.id == id) else {
            return (Vec::new(), 0);
        };
        let batch = &mut state.open[at];
        let (gone, stay): (Vec<Member>, Vec<Member>) = std::mem::take(&mut batch.members)
            .into_iter()
            .partition(|m| m.deadline <= before || m.tx.is_closed());
        let (stay, mut gone) = rebuild(&mut batch.merge, stay, gone);
        let left = stay.len();
        batch.members = stay;
        release_riders(&mut batch.riders, |r| left == 0 || r.deadline <= before);
        if left == 0 {
            state.open.remove(at);
            remove_if_idle(&mut shard, group);
        }
        gone.retain(|m| !m.tx.is_closed());
        (gone, left)
    }

    /// Closes batch `id` for sending: it leaves the open list and counts as in flight.
    /// Callers past their deadline or gone are returned apart (never sent). `None` when no
    /// caller is left to send for.
    pub fn seal(&self, group: &str, id: u64, now: Instant) -> (Option<Sealed>, Vec<Member>) {
        let mut shard = self.shard(group);
        let Some(state) = shard.get_mut(group) else {
            return (None, Vec::new());
        };
        let Some(at) = state.open.iter().position(|b| b.id == id) else {
            return (None, Vec::new());
        };
        let mut batch = state.open.remove(at);
        let (late, live): (Vec<Member>, Vec<Member>) = std::mem::take(&mut batch.members)
            .into_iter()
            .partition(|m| m.deadline < now || m.tx.is_closed());
        let (live, mut late) = rebuild(&mut batch.merge, live, late);
        late.retain(|m| !m.tx.is_closed());
        if live.is_empty() {
            release_riders(&mut batch.riders, |_| true);
            remove_if_idle(&mut shard, group);
            return (None, late);
        }
        state.calls += 1;
        (
            Some(Sealed {
                merge: batch.merge,
                members: live,
                riders: batch.riders,
                template: batch.template,
            }),
            late,
        )
    }

    /// A sealed batch's call returned: the group's next batch may go.
    /// Claims an idle group for one call sent at once, as its caller's own bytes: `false` when
    /// an increment call of the group is in flight or a batch is waiting (then the caller
    /// joins a batch). A claimed group counts one call in flight, so increments arriving
    /// meanwhile start its next batch; [`Registry::finish`] ends the claim.
    pub fn try_claim(&self, group: &str) -> bool {
        let mut shard = self.shard(group);
        match shard.get_mut(group) {
            Some(state) if state.calls > 0 || !state.open.is_empty() || !state.line.is_empty() => {
                false
            }
            Some(state) => {
                state.calls += 1;
                true
            }
            None => {
                let mut state = GroupState::new();
                state.calls = 1;
                shard.insert(group.into(), state);
                true
            }
        }
    }

    pub fn finish(&self, group: &str) {
        let mut shard = self.shard(group);
        if let Some(state) = shard.get_mut(group) {
            state.calls = state.calls.saturating_sub(1);
            state.wake();
        }
        remove_if_idle(&mut shard, group);
    }

    /// Puts a read of `keys` into the group's first waiting batch that sets every one of
    /// them; `false` when there is none.
    pub fn ride(&self, group: &str, keys: &[String], rider: impl FnOnce() -> Rider) -> bool {
        let mut shard = self.shard(group);
        let Some(state) = shard.get_mut(group) else {
            return false;
        };
        let batch = state.open.iter_mut().find(|b| {
            !b.members.is_empty() && keys.iter().all(|k| b.merge.sums().any(|(key, _)| key == k))
        });
        match batch {
            Some(batch) => {
                batch.riders.push(rider());
                true
            }
            None => false,
        }
    }

    /// Joins the end of the group's line for its next token: a ticket, and what wakes the
    /// line when it moves.
    pub fn join_line(&self, group: &str) -> (u64, Arc<Notify>) {
        let ticket = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(group);
        let state = shard.entry(group.into()).or_insert_with(GroupState::new);
        state.line.push_back(ticket);
        (
            ticket,
            state
                .line_moved
                .get_or_insert_with(Default::default)
                .clone(),
        )
    }

    /// Whether `ticket` is first in the group's line (its turn to ask the limiter).
    pub fn first_in_line(&self, group: &str, ticket: u64) -> bool {
        let shard = self.shard(group);
        shard
            .get(group)
            .and_then(|state| state.line.front())
            .is_some_and(|first| *first == ticket)
    }

    /// Takes `ticket` out of the group's line (its tokens taken, or it gave up) and wakes
    /// the rest.
    pub fn leave_line(&self, group: &str, ticket: u64) {
        let mut shard = self.shard(group);
        if let Some(state) = shard.get_mut(group) {
            if let Some(at) = state.line.iter().position(|t| *t == ticket) {
                state.line.remove(at);
            }
            if let Some(moved) = &state.line_moved {
                moved.notify_waiters();
            }
        }
        remove_if_idle(&mut shard, group);
    }

    /// Adds a reader to the group's next shared read with the same keys.
    pub fn join_read(
        &self,
        group: &str,
        key: ReadKey,
        req: Request<Bytes>,
        reader: Reader,
        max_callers: usize,
    ) -> ReadJoin {
        let mut shard = self.shard(group);
        let state = shard.entry(group.into()).or_insert_with(GroupState::new);
        match state.reads.iter_mut().find(|l| l.key == key) {
            Some(lane) if lane.waiting.len() >= max_callers => ReadJoin::Full(Box::new(req)),
            Some(lane) => {
                lane.waiting.push(reader);
                if lane.template.is_none() {
                    lane.template = Some(req);
                }
                ReadJoin::Joined
            }
            None => {
                state.reads.push(ReadLane {
                    key,
                    waiting: vec![reader],
                    template: Some(req),
                });
                ReadJoin::New
            }
        }
    }

    /// The readers of the next shared read and its request; `None` (and the lane is removed)
    /// when nobody waits.
    pub fn take_reads(&self, group: &str, key: &ReadKey) -> Option<(Request<Bytes>, Vec<Reader>)> {
        let mut shard = self.shard(group);
        let state = shard.get_mut(group)?;
        let at = state.reads.iter().position(|l| l.key == *key)?;
        let lane = &mut state.reads[at];
        lane.waiting.retain(|r| !r.tx.is_closed());
        match (lane.waiting.is_empty(), lane.template.take()) {
            (false, Some(req)) => Some((req, std::mem::take(&mut lane.waiting))),
            _ => {
                state.reads.remove(at);
                remove_if_idle(&mut shard, group);
                None
            }
        }
    }
}

/// Tells the riders that `release` picks to go on their own.
fn release_riders(riders: &mut Vec<Rider>, release: impl Fn(&Rider) -> bool) {
    if riders.is_empty() {
        return;
    }
    let (out, keep): (Vec<Rider>, Vec<Rider>) =
        std::mem::take(riders).into_iter().partition(|r| release(r));
    *riders = keep;
    for r in out {
        // Its answer is now its own read's: the rider's future sends it.
        let _ = r.tx.send(None);
    }
}

fn remove_if_idle(shard: &mut HashMap<Box<str>, GroupState>, group: &str) {
    if shard.get(group).is_some_and(GroupState::is_idle) {
        shard.remove(group);
    }
}

/// The sums of the callers that stay, from scratch. Any subset of a batch fits (see
/// [`super::merge::Refused::Sign`]); a caller that should not is moved to `out` all the same.
fn rebuild(
    merge: &mut Merge,
    stay: Vec<Member>,
    mut out: Vec<Member>,
) -> (Vec<Member>, Vec<Member>) {
    if out.is_empty() {
        return (stay, out);
    }
    let mut fresh = Merge::new(merge.mode(), usize::MAX);
    let mut kept = Vec::with_capacity(stay.len());
    for m in stay {
        if fresh.try_join(&m.inc).is_ok() {
            kept.push(m);
        } else {
            out.push(m);
        }
    }
    *merge = fresh.with_max_callers_of(merge);
    (kept, out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_claim_is_had_only_on_a_quiet_group_and_ends_with_finish() {
        let registry = Registry::new();
        assert!(registry.try_claim("g"));
        assert!(!registry.try_claim("g"), "one call of the group at a time");
        assert!(registry.try_claim("other"), "groups are independent");
        assert_eq!(registry.busy_groups(), 2);
        registry.finish("g");
        registry.finish("other");
        assert_eq!(registry.busy_groups(), 0, "nothing kept once idle");
        assert!(registry.try_claim("g"), "claimable again");
        registry.finish("g");
    }
    use crate::coalesce::merge::Mode;

    fn member(value: i64, wait: Duration) -> (Member, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        let m = Member {
            inc: Increment {
                mode: Mode::Increase,
                counters: [("likes".into(), value)].into_iter().collect(),
            },
            body: Bytes::new(),
            deadline: Instant::now() + wait,
            tx,
            brought_group_token: false,
            trace: None,
        };
        (m, rx)
    }

    fn parts() -> http::request::Parts {
        Request::new(()).into_parts().0
    }

    fn new_id(joined: Joined) -> u64 {
        match joined {
            Joined::New { id, .. } => id,
            Joined::Existing => panic!("expected a new batch"),
        }
    }

    #[test]
    fn groups_are_forgotten_once_nothing_is_in_flight_or_waiting() {
        let r = Registry::new();
        let second = Duration::from_secs(1);
        for i in 0..1000 {
            let group = format!("g{i}");
            let (m, _rx) = member(1, second);
            let id = new_id(r.join(&group, m, parts(), 10));
            let (sealed, late) = r.seal(&group, id, Instant::now());
            assert!(sealed.is_some() && late.is_empty());
            r.finish(&group);
        }
        assert_eq!(
            r.busy_groups(),
            0,
            "a flood of distinct groups leaves nothing"
        );

        // Every caller past its deadline: the batch and the group go.
        let (m, _rx) = member(1, Duration::ZERO);
        let id = new_id(r.join("e", m, parts(), 10));
        let (gone, left) = r.expire("e", id, Instant::now() + second);
        assert_eq!((gone.len(), left), (1, 0));
        assert_eq!(r.turn("e", id), Turn::Gone);
        assert_eq!(r.busy_groups(), 0);

        // A caller that hung up before its batch was sealed is never sent.
        let (m, rx) = member(1, second);
        let id = new_id(r.join("h", m, parts(), 10));
        drop(rx);
        let (sealed, late) = r.seal("h", id, Instant::now());
        assert!(sealed.is_none() && late.is_empty());
        assert_eq!(r.busy_groups(), 0);

        // Shared reads: the lane goes when nobody waits.
        let key = ReadKey { keys: None };
        let (tx, _rx) = oneshot::channel();
        let reader = Reader {
            tx,
            deadline: Instant::now() + second,
        };
        assert!(matches!(
            r.join_read("r", key.clone(), Request::new(Bytes::new()), reader, 10),
            ReadJoin::New
        ));
        assert!(r.take_reads("r", &key).is_some());
        assert!(r.take_reads("r", &key).is_none());
        assert_eq!(r.busy_groups(), 0);
    }

    #[test]
    fn a_caller_whose_max_wait_passed_while_its_batch_was_sealed_is_not_sent() {
        let r = Registry::new();
        let (early, _a) = member(1, Duration::from_millis(10));
        let (later, _b) = member(2, Duration::from_secs(5));
        let id = new_id(r.join("s", early, parts(), 10));
        assert!(matches!(r.join("s", later, parts(), 10), Joined::Existing));
        // The token came (a slow limiter check) only after the first caller's max_wait.
        let (sealed, late) = r.seal("s", id, Instant::now() + Duration::from_millis(20));
        assert_eq!(late.len(), 1, "past its max_wait: refused, never sent");
        assert_eq!(late[0].inc.counters[0].1, 1);
        let sealed = sealed.expect("the other caller is sent");
        assert_eq!(sealed.members.len(), 1);
        assert_eq!(sealed.merge.sums().collect::<Vec<_>>(), [("likes", 2)]);
    }

    #[test]
    fn a_group_token_brought_by_a_joiner_is_taken_once() {
        let r = Registry::new();
        let (m, _rx) = member(1, Duration::from_secs(5));
        let id = new_id(r.join("t", m, parts(), 10));
        assert!(!r.take_brought_group_token("t", id), "nobody brought one");
        let (mut late, _rx2) = member(2, Duration::from_secs(5));
        late.brought_group_token = true;
        assert!(matches!(r.join("t", late, parts(), 10), Joined::Existing));
        assert!(r.take_brought_group_token("t", id), "the joiner's token");
        assert!(
            !r.take_brought_group_token("t", id),
            "one call needs one token"
        );
    }

    #[test]
    fn a_batch_waits_while_its_group_has_a_call_in_flight_unless_full() {
        let r = Registry::new();
        let wait = Duration::from_secs(1);
        let (m, _a) = member(1, wait);
        let first = new_id(r.join("g", m, parts(), 2));
        assert_eq!(r.turn("g", first), Turn::Go, "nothing in flight");
        let (sealed, _) = r.seal("g", first, Instant::now());
        assert!(sealed.is_some());
        let (m, _b) = member(1, wait);
        let next = new_id(r.join("g", m, parts(), 2));
        assert!(
            matches!(r.turn("g", next), Turn::Wait(_)),
            "a call is in flight"
        );
        let (m, _c) = member(1, wait);
        assert!(matches!(r.join("g", m, parts(), 2), Joined::Existing));
        assert_eq!(r.turn("g", next), Turn::Go, "full: it need not wait");
        let (m, _d) = member(1, wait);
        let third = new_id(r.join("g", m, parts(), 2));
        r.finish("g");
        assert_eq!(r.turn("g", third), Turn::Go, "the call returned");
        // Expiring one of two callers rebuilds the sums from the one left.
        let (m, _e) = member(5, Duration::ZERO);
        assert!(matches!(r.join("g", m, parts(), 2), Joined::Existing));
        let (gone, left) = r.expire("g", third, Instant::now());
        assert_eq!((gone.len(), left), (1, 1));
        let (sealed, _) = r.seal("g", third, Instant::now());
        let sealed = sealed.expect("one caller left");
        assert_eq!(sealed.merge.sums().collect::<Vec<_>>(), [("likes", 1)]);
    }
}
