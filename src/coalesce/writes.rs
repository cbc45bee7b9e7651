//! A batch of increments from its first caller to the last answer: it gathers callers while
//! its group's call is in flight, waits its turn for one group and one app token, is sent as
//! one call, and each caller (and each read riding on it) is answered from that call. A call
//! Tencent refuses whole for a reason that may be only some callers' is sent again in smaller
//! parts, so that each caller gets the answer its own increment deserves.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::request::Parts;
use http::Request;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt;

use super::answer::{Pending, SharedAnswer};
use super::group::{Member, Rider, Sealed, Turn};
use super::layer::{Driver, DriverCtx, Inner};
use super::line::{take_tokens, Held, OnApp, Tokens, Waiters};
use super::merge::{self, Merge};
use super::trace::{self, TokenWait};
use crate::error::GatewayError;
use crate::exchange::{BoxFuture, GatewayResponse};
use crate::rate_limit::Refusal;
use crate::rate_limit::TokensTaken;

type Outcome = Result<GatewayResponse, GatewayError>;

impl<S> Driver<S>
where
    S: Inner,
{
    pub async fn drive_writes(self, id: u64, turn: Arc<Notify>) {
        let ctx = &self.ctx;
        if !ctx.gather(id, &turn).await {
            return;
        }
        let registry = &ctx.shared.registry;
        let mut waiting = OpenBatch { ctx, id };
        let from = SystemTime::now();
        let tokens = take_tokens(
            registry,
            &*ctx.shared.limiter,
            &ctx.api,
            &ctx.group,
            false,
            OnApp::Wait,
            &mut waiting,
        )
        .await;
        if !matches!(tokens, Tokens::Taken) {
            return;
        }
        let wait = TokenWait {
            from,
            until: SystemTime::now(),
        };
        let (sealed, late) = registry.seal(&ctx.group, id, Instant::now());
        ctx.refuse(late, None);
        if let Some(sealed) = sealed {
            self.send(sealed, true, wait).await;
        }
    }

    /// Sends a batch whose tokens are taken and answers its callers and riders. `first`: the
    /// group's own batch (its end lets the group's next batch go), not a part sent again.
    /// `wait`: when it waited for its tokens (a span of its trace).
    fn send(self, sealed: Sealed, first: bool, wait: TokenWait) -> BoxFuture<()> {
        Box::pin(async move {
            let Sealed {
                merge,
                members,
                riders,
                mut template,
            } = sealed;
            let ctx = &self.ctx;
            let n = members.len();
            let batch_span = trace::begin(ctx, &members, &mut template, Some(wait));
            // Kept only where a part may be sent again: a merged call.
            let again = (n > 1).then(|| template.clone());
            let body = match &members[..] {
                [only] => only.body.clone(),
                _ => Bytes::from(merge.body(&ctx.group)),
            };
            let mut req = Request::from_parts(template, body);
            req.extensions_mut().insert(TokensTaken);
            let mut pending = Pending {
                members,
                sent: true,
            };
            ctx.api.metrics(&ctx.shared.metrics).batch_sent(n);
            if n > 1 {
                tracing::debug!(
                    api = &*ctx.api.name,
                    callers = n,
                    "sending a coalesced call"
                );
            }
            let result = self.inner.clone().oneshot(req).await;
            trace::end(batch_span, &result);
            if first {
                ctx.shared.registry.finish(&ctx.group);
                if n > 1 {
                    // `finish` woke the group's next batch: let it be sent (its driver, then
                    // the upstream connection's task) before thousands of answers queue up
                    // ahead of it on a busy runtime and hold back the group's next call.
                    tokio::task::yield_now().await;
                    tokio::task::yield_now().await;
                }
            }
            let members = std::mem::take(&mut pending.members);
            self.answer(result, members, riders, merge, again).await;
        })
    }

    async fn answer(
        self,
        result: Outcome,
        members: Vec<Member>,
        riders: Vec<Rider>,
        merge: Merge,
        again: Option<http::request::Parts>,
    ) {
        if members.len() == 1 && riders.is_empty() {
            if let Some(m) = members.into_iter().next() {
                let _ = m.tx.send(result);
            }
            return;
        }
        let shared = |n: usize| {
            if n > 1 {
                let api = self.ctx.api.metrics(&self.ctx.shared.metrics);
                api.answered_from_shared(n as u64);
            }
        };
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                shared(members.len());
                for m in members {
                    let _ = m.tx.send(Err(e.clone()));
                }
                // Riders are sent on their own (dropping them says so).
                return;
            }
        };
        let answer = SharedAnswer::split(response).await;
        if let (true, Some(template)) = (answer.refused_whole(), again) {
            // Nothing was applied: each part gets its own answer.
            tracing::info!(
                api = &*self.ctx.api.name,
                callers = members.len(),
                "a merged call was refused whole; sending its callers again in smaller parts"
            );
            self.send_parts(members, merge.mode(), template).await;
            return;
        }
        let values = answer
            .ok()
            .then(|| merge::answer_values(&answer.body))
            .flatten();
        let callers = members.len() + riders.len();
        shared(members.len());
        answer_members(&answer, values.as_deref(), members, callers);
        for r in riders {
            let body = values
                .as_deref()
                .and_then(|v| merge::caller_answer(v, r.keys.iter().map(String::as_str)));
            if let Some(body) = body {
                r.api
                    .metrics(&self.ctx.shared.metrics)
                    .answered_from_shared(1);
                let _ =
                    r.tx.send(Some(Ok(answer.answer(Bytes::from(body), callers))));
            }
            // Otherwise dropped: the rider sends its read on its own.
        }
    }

    /// Splits a batch Tencent refused whole in two and sends each part (after its own
    /// tokens, within its callers' `max_wait`), the parts at once.
    async fn send_parts(self, members: Vec<Member>, mode: merge::Mode, template: Parts) {
        let (a, b) = split(members);
        let sends = [a, b]
            .into_iter()
            .filter(|part| !part.is_empty())
            .map(|part| self.cloned().send_part(part, mode, template.clone()));
        futures_util::future::join_all(sends).await;
    }

    async fn send_part(self, members: Vec<Member>, mode: merge::Mode, template: Parts) {
        let ctx = &self.ctx;
        let mut waiting = Held { ctx, list: members };
        let from = SystemTime::now();
        let tokens = take_tokens(
            &ctx.shared.registry,
            &*ctx.shared.limiter,
            &ctx.api,
            &ctx.group,
            false,
            OnApp::Wait,
            &mut waiting,
        )
        .await;
        let mut members = waiting.list;
        // A caller who hung up is never sent, as in a batch being sealed.
        members.retain(|m| !m.tx.is_closed());
        if !matches!(tokens, Tokens::Taken) || members.is_empty() {
            return;
        }
        // Any subset of a batch merges (one Mode, one sign per key).
        let mut merge = Merge::new(mode, usize::MAX);
        for m in &members {
            let _ = merge.try_join(&m.inc);
        }
        let sealed = Sealed {
            merge,
            members,
            riders: Vec::new(),
            template,
        };
        let wait = TokenWait {
            from,
            until: SystemTime::now(),
        };
        self.send(sealed, false, wait).await;
    }
}

impl DriverCtx {
    /// While the group's call is in flight, the batch gathers callers; `false` once every
    /// caller was answered.
    async fn gather(&self, id: u64, turn: &Notify) -> bool {
        let registry = &self.shared.registry;
        loop {
            let notified = turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match registry.turn(&self.group, id) {
                Turn::Gone => return false,
                Turn::Go => return true,
                Turn::Wait(deadline) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(deadline) => {
                            let (gone, left) = registry.expire(&self.group, id, Instant::now());
                            self.refuse(gone, None);
                            if left == 0 {
                                return false;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Each member's answer from Tencent's answer to the call: its own keys' latest values when
/// Tencent said OK, Tencent's answer as it came otherwise.
fn answer_members(
    answer: &SharedAnswer,
    values: Option<&[(String, i64)]>,
    members: Vec<Member>,
    callers: usize,
) {
    // Callers with the same keys (a live stream's likes: all of them) share one answer body.
    let mut last: Option<(Vec<String>, Bytes)> = None;
    for m in members {
        let body = match &last {
            Some((keys, body)) if m.inc.keys().eq(keys.iter().map(String::as_str)) => body.clone(),
            _ => {
                let body = values
                    .and_then(|v| merge::caller_answer(v, m.inc.keys()))
                    .map_or_else(|| answer.body.clone(), Bytes::from);
                last = Some((m.inc.keys().map(str::to_string).collect(), body.clone()));
                body
            }
        };
        let _ = m.tx.send(Ok(answer.answer(body, callers)));
    }
}

/// Two parts of a refused batch. The callers of the most common key set apart from the rest
/// first (a hot group's likes apart from the one caller who adds a key the group has no room
/// for); callers that all share one key set in two halves (a sum too large for a key).
fn split(members: Vec<Member>) -> (Vec<Member>, Vec<Member>) {
    let key_set = |m: &Member| {
        let mut keys: Vec<&str> = m.inc.keys().collect();
        keys.sort_unstable();
        keys.join("\u{0}")
    };
    let mut counts: Vec<(String, usize)> = Vec::new();
    for m in &members {
        let set = key_set(m);
        match counts.iter_mut().find(|(s, _)| *s == set) {
            Some((_, n)) => *n += 1,
            None => counts.push((set, 1)),
        }
    }
    if counts.len() > 1 {
        let common = counts
            .iter()
            .max_by_key(|(_, n)| *n)
            .map(|(s, _)| s.clone())
            .unwrap_or_default();
        return members.into_iter().partition(|m| key_set(m) == common);
    }
    let mut first = members;
    let second = first.split_off(first.len() / 2);
    (first, second)
}

/// The callers of a batch still open to joiners, waiting for its tokens.
struct OpenBatch<'a> {
    ctx: &'a DriverCtx,
    id: u64,
}

impl Waiters for OpenBatch<'_> {
    fn earliest(&self) -> Option<Instant> {
        self.ctx.shared.registry.deadline(&self.ctx.group, self.id)
    }

    fn expire(&mut self, before: Instant, refusal: Option<Refusal>) -> bool {
        let ctx = self.ctx;
        let (gone, left) = ctx.shared.registry.expire(&ctx.group, self.id, before);
        ctx.refuse(gone, refusal);
        left > 0
    }

    fn brought_group_token(&mut self) -> bool {
        let ctx = self.ctx;
        ctx.shared
            .registry
            .take_brought_group_token(&ctx.group, self.id)
    }
}
