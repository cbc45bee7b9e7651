//! The coalescing layer: after validation, before the rate limit. A mergeable increment joins
//! its group's next batch; the batch's driver (a task of its own, so that a caller hanging up
//! cancels nothing) waits for the group's call in flight, takes one group and one app token
//! (waiting for them up to the callers' `max_wait`), sends one call through the rate-limit,
//! retry and sign layers with [`TokensTaken`], and answers every caller from it.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::group::{Answer, Joined, Member, ReadJoin, Registry, Turn};
use super::merge::{self, ReadKey};
use super::COALESCED_HEADER;
use crate::api::Api;
use crate::apis::PayloadFacts;
use crate::config::CoalesceConfig;
use crate::error::{GatewayError, UpstreamFailure};
use crate::metrics::Metrics;
use crate::middleware::rate_limit::{refused, TokensTaken};
use crate::middleware::{BoxFuture, GatewayResponse, UpstreamReport};
use crate::rate_limit::{RateLimiter, Refusal, Scope};

const UPDATE_API: &str = "group_open_http_svc/update_group_counter";
const GET_API: &str = "group_open_http_svc/get_group_counter";

/// Retry-After for a caller whose `max_wait` ran out while its group's call was in flight.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct CoalesceLayer {
    shared: Arc<Shared>,
}

struct Shared {
    registry: Registry,
    config: CoalesceConfig,
    limiter: Arc<dyn RateLimiter>,
    metrics: Metrics,
}

impl std::fmt::Debug for CoalesceLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalesceLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl CoalesceLayer {
    pub fn new(config: CoalesceConfig, limiter: Arc<dyn RateLimiter>, metrics: Metrics) -> Self {
        CoalesceLayer {
            shared: Arc::new(Shared {
                registry: Registry::new(),
                config,
                limiter,
                metrics,
            }),
        }
    }
}

impl<S> Layer<S> for CoalesceLayer {
    type Service = Coalesce<S>;
    fn layer(&self, inner: S) -> Coalesce<S> {
        Coalesce {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Coalesce<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for Coalesce<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Coalesce")
    }
}

impl<S> Service<Request<Bytes>> for Coalesce<S>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = Either<Either<S::Future, ClaimedCall<S::Future>>, BoxFuture<Answer>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let alone = |call| Either::Left(Either::Left(call));
        let Some(api) = req.extensions().get::<Api>().cloned() else {
            return alone(self.inner.call(req));
        };
        let config = &self.shared.config;
        if config.enabled && &*api.name == UPDATE_API {
            let group_token = match self.send_at_once(&api, &mut req) {
                AtOnce::Sent(claim) => {
                    return Either::Left(Either::Right(ClaimedCall {
                        call: self.inner.call(req),
                        _claim: claim,
                    }))
                }
                AtOnce::NotNow { group_token } => group_token,
            };
            let increment = req
                .extensions_mut()
                .remove::<PayloadFacts>()
                .map(|facts| merge::increment_of(facts, req.body()));
            match increment {
                Some(Ok((group, inc))) => {
                    return Either::Right(Box::pin(self.write(api, group, inc, req, group_token)))
                }
                Some(Err(facts)) => {
                    req.extensions_mut().insert(facts);
                }
                None => {}
            }
        } else if config.reads && &*api.name == GET_API {
            if let Some((group, key)) = merge::parse_read(req.body()) {
                return match self.read(api, group, key, req) {
                    Ok(waiting) => Either::Right(waiting),
                    Err(req) => alone(self.inner.call(*req)),
                };
            }
        }
        alone(self.inner.call(req))
    }
}

impl<S> Coalesce<S> {
    /// The common case, a lone increment of a quiet group, without a task or a channel: when
    /// nothing of the group is in flight or waiting and the limiter has its tokens now, the
    /// caller's own request is sent from the caller's own future, which holds the group
    /// until the answer (increments arriving meanwhile start the group's next batch).
    /// `None` when it must join a batch instead (the group is busy, the token is not there
    /// yet, or the limiter cannot answer at once).
    fn send_at_once(&self, api: &Api, req: &mut Request<Bytes>) -> AtOnce {
        let shared = &self.shared;
        let not_now = AtOnce::NotNow { group_token: false };
        if !shared.limiter.decides_at_once() {
            return not_now;
        }
        let mergeable = req.extensions().get::<PayloadFacts>().is_some_and(|facts| {
            merge::is_mergeable(facts) && shared.registry.try_claim(&facts.group_id)
        });
        if !mergeable {
            return not_now;
        }
        // Nothing after this layer reads the facts of a call that has its tokens: the claim
        // takes the group's name from them (and the extension's place goes to the marker).
        let Some(facts) = req.extensions_mut().remove::<PayloadFacts>() else {
            return not_now;
        };
        let claim = Claim {
            shared: shared.clone(),
            group: facts.group_id,
        };
        match shared.limiter.check(api, Some(&claim.group)).ready() {
            Some(Ok(())) => {
                req.extensions_mut().insert(TokensTaken);
                api.metrics(&shared.metrics).coalesce_call(1);
                AtOnce::Sent(claim)
            }
            // No token now: the caller waits for one in a batch (which others may join). A
            // refusal by the app limit has already spent the group's token: the batch then
            // waits for the app's alone.
            result => {
                let facts = PayloadFacts {
                    group_id: claim.group.clone(),
                    update: facts.update,
                };
                req.extensions_mut().insert(facts);
                AtOnce::NotNow {
                    group_token: matches!(result, Some(Err(r)) if r.scope == Scope::App),
                }
            }
        }
    }
}

/// What [`Coalesce::send_at_once`] did.
enum AtOnce {
    Sent(Claim),
    NotNow { group_token: bool },
}

/// A quiet group claimed by one call sent at once; dropping it (the answer came, or the
/// caller hung up) ends the call for the group and wakes its next batch.
pub struct Claim {
    shared: Arc<Shared>,
    group: Box<str>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.shared.registry.finish(&self.group);
    }
}

pin_project_lite::pin_project! {
    /// A call sent at once, holding its group's claim until it is answered.
    pub struct ClaimedCall<F> {
        #[pin]
        call: F,
        _claim: Claim,
    }
}

impl<F: std::future::Future> std::future::Future for ClaimedCall<F> {
    type Output = F::Output;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().call.poll(cx)
    }
}

impl<S> Coalesce<S>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    fn write(
        &mut self,
        api: Api,
        group: String,
        inc: merge::Increment,
        req: Request<Bytes>,
        group_token: bool,
    ) -> impl std::future::Future<Output = Answer> + Send + 'static {
        let (parts, body) = req.into_parts();
        let (tx, rx) = oneshot::channel();
        let member = Member {
            inc,
            body,
            deadline: Instant::now() + self.shared.config.max_wait,
            tx,
        };
        let joined =
            self.shared
                .registry
                .join(&group, member, parts, self.shared.config.max_callers);
        if let Joined::New { id, turn } = joined {
            let driver = Driver {
                shared: self.shared.clone(),
                inner: self.inner.clone(),
                api,
                group: Arc::from(group.as_str()),
            };
            tokio::spawn(driver.drive_writes(id, turn, group_token));
        }
        async move {
            match rx.await {
                Ok(answer) => answer,
                // Only when the runtime stops with the batch still open: never sent.
                Err(_) => Err(GatewayError::RateLimitedGroup {
                    group,
                    retry_after_secs: 1,
                }),
            }
        }
    }

    fn read(
        &mut self,
        api: Api,
        group: String,
        key: ReadKey,
        req: Request<Bytes>,
    ) -> Result<BoxFuture<Answer>, Box<Request<Bytes>>> {
        let (tx, rx) = oneshot::channel();
        let max = self.shared.config.max_callers;
        match self
            .shared
            .registry
            .join_read(&group, key.clone(), req, tx, max)
        {
            ReadJoin::Full(req) => return Err(req),
            ReadJoin::Joined => {}
            ReadJoin::New => {
                let driver = Driver {
                    shared: self.shared.clone(),
                    inner: self.inner.clone(),
                    api,
                    group: Arc::from(group.as_str()),
                };
                tokio::spawn(driver.drive_reads(key));
            }
        }
        Ok(Box::pin(async move {
            match rx.await {
                Ok(answer) => answer,
                Err(_) => Err(GatewayError::Draining),
            }
        }))
    }
}

/// Drives one batch (or one group's shared reads) from its first caller's arrival to the
/// last answer.
struct Driver<S> {
    shared: Arc<Shared>,
    inner: S,
    api: Api,
    group: Arc<str>,
}

impl<S> Driver<S>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    /// `group_token`: the group's token was already taken for this batch (its first caller
    /// found the app's budget spent).
    async fn drive_writes(self, id: u64, turn: Arc<tokio::sync::Notify>, mut group_token: bool) {
        let registry = &self.shared.registry;
        // 1. While the group's call is in flight, the batch gathers callers.
        loop {
            let notified = turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match registry.turn(&self.group, id) {
                Turn::Gone => return,
                Turn::Go => break,
                Turn::Wait(deadline) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(deadline) => {
                            if self.expire(id, Instant::now(), None) == 0 {
                                return;
                            }
                        }
                    }
                }
            }
        }
        // 2. One group token and one app token for the whole batch, which stays open to
        //    joiners while it waits for them.
        loop {
            let group = (!group_token).then_some(&*self.group);
            match self.shared.limiter.check(&self.api, group).await {
                Ok(()) => break,
                Err(refusal) => {
                    // The app limit refuses only after the group's token was taken (group
                    // first): from then on wait for the app's alone, so that a batch never
                    // spends more than one of its group's tokens.
                    group_token |= refusal.scope == Scope::App;
                    let retry_at = Instant::now() + refusal.retry_after;
                    // Callers whose max_wait ends before the token can come are answered now.
                    if self.expire(id, retry_at, Some(refusal)) == 0 {
                        return;
                    }
                    tokio::time::sleep_until(retry_at).await;
                }
            }
        }
        // 3. Closed: built and sent as one request.
        let (sealed, late) = registry.seal(&self.group, id, Instant::now());
        self.refuse(late, None);
        let Some(sealed) = sealed else {
            return;
        };
        let mut pending = Pending {
            members: sealed.members,
            sent: false,
        };
        let n = pending.members.len();
        let body = match &pending.members[..] {
            [only] => only.body.clone(),
            _ => Bytes::from(sealed.merge.body(&self.group)),
        };
        let mut req = Request::from_parts(sealed.template, body);
        req.extensions_mut().insert(TokensTaken);
        pending.sent = true;
        self.api.metrics(&self.shared.metrics).coalesce_call(n);
        if n > 1 {
            tracing::debug!(
                api = &*self.api.name,
                callers = n,
                "sending a coalesced call"
            );
        }
        let result = self.inner.clone().oneshot(req).await;
        registry.finish(&self.group);
        if n > 1 {
            // `finish` woke the group's next batch: let it be sent (its driver, then the
            // upstream connection's task) before thousands of answers queue up ahead of it on
            // a busy runtime and hold back the group's next call.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        }
        let members = std::mem::take(&mut pending.members);
        if n == 1 {
            if let Some(m) = members.into_iter().next() {
                let _ = m.tx.send(result);
            }
            return;
        }
        match result {
            Err(e) => {
                for m in members {
                    let _ = m.tx.send(Err(e.clone()));
                }
            }
            Ok(response) => {
                let answer = SharedAnswer::split(response).await;
                let values = answer
                    .ok()
                    .then(|| merge::answer_values(&answer.body))
                    .flatten();
                // Callers with the same keys (a live stream's likes: all of them) share one
                // answer body.
                let mut last: Option<(Vec<String>, Bytes)> = None;
                for m in members {
                    let body = match &last {
                        Some((keys, body)) if m.inc.keys().eq(keys.iter().map(String::as_str)) => {
                            body.clone()
                        }
                        _ => {
                            let body = values
                                .as_ref()
                                .and_then(|v| merge::caller_answer(v, &m.inc))
                                .map_or_else(|| answer.body.clone(), Bytes::from);
                            last = Some((m.inc.keys().map(str::to_string).collect(), body.clone()));
                            body
                        }
                    };
                    let _ = m.tx.send(Ok(answer.answer(body, n)));
                }
            }
        }
    }

    /// Answers the callers of batch `id` whose deadline is at or before `before`; returns
    /// how many stay.
    fn expire(&self, id: u64, before: Instant, refusal: Option<Refusal>) -> usize {
        let (gone, left) = self.shared.registry.expire(&self.group, id, before);
        self.refuse(gone, refusal);
        left
    }

    /// 10006 (or the app limit's 60007 when that is what stood in the way) for callers that
    /// were never sent.
    fn refuse(&self, members: Vec<Member>, refusal: Option<Refusal>) {
        if members.is_empty() {
            return;
        }
        let refusal = refusal.unwrap_or(Refusal {
            scope: Scope::Group,
            retry_after: BUSY_RETRY_AFTER,
        });
        tracing::info!(
            api = &*self.api.name,
            callers = members.len(),
            scope = refusal.scope.as_str(),
            "coalesced callers waited max_wait without their call being sent; refused, never applied"
        );
        for m in members {
            let error = refused(&self.api, Some(&self.group), refusal, &self.shared.metrics);
            let _ = m.tx.send(Err(error));
        }
    }

    async fn drive_reads(self, key: ReadKey) {
        while let Some((req, waiting)) = self.shared.registry.take_reads(&self.group, &key) {
            let n = waiting.len();
            self.api.metrics(&self.shared.metrics).coalesce_call(n);
            let result = self.inner.clone().oneshot(req).await;
            match (result, n) {
                (result, 1) => {
                    if let Some(tx) = waiting.into_iter().next() {
                        let _ = tx.send(result);
                    }
                }
                (Err(e), _) => {
                    for tx in waiting {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
                (Ok(response), _) => {
                    let answer = SharedAnswer::split(response).await;
                    for tx in waiting {
                        let _ = tx.send(Ok(answer.answer(answer.body.clone(), n)));
                    }
                }
            }
        }
    }
}

/// Callers of a sealed batch not yet answered. Should the driver stop before answering them
/// (the runtime shutting down), each still gets an answer that says what may have happened.
struct Pending {
    members: Vec<Member>,
    sent: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.members.is_empty() {
            return;
        }
        tracing::warn!(
            callers = self.members.len(),
            sent = self.sent,
            "a coalesced call was abandoned before its answer"
        );
        for m in self.members.drain(..) {
            let error = if self.sent {
                GatewayError::UpstreamUnavailable {
                    failure: UpstreamFailure::Io,
                    elapsed: Duration::ZERO,
                }
            } else {
                GatewayError::Draining
            };
            let _ = m.tx.send(Err(error));
        }
    }
}

/// A shared call's answer, taken apart once for its callers.
struct SharedAnswer {
    status: http::StatusCode,
    content_type: Option<HeaderValue>,
    report: Option<UpstreamReport>,
    body: Bytes,
}

impl SharedAnswer {
    async fn split(response: GatewayResponse) -> SharedAnswer {
        let (parts, body) = response.into_parts();
        // A `Full` body is already in memory: collecting it cannot fail or wait.
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        SharedAnswer {
            status: parts.status,
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            report: parts.extensions.get::<UpstreamReport>().copied(),
            body,
        }
    }
}

impl SharedAnswer {
    /// Tencent said OK (so each caller gets its own keys' latest values).
    fn ok(&self) -> bool {
        self.status.is_success() && self.report.and_then(|r| r.error_code) == Some(0)
    }

    /// One caller's answer. Each carries the call's report, so that it is counted as the
    /// outcome it is; the upstream metrics were counted once, when the call was made.
    fn answer(&self, body: Bytes, callers: usize) -> GatewayResponse {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if let Some(ct) = &self.content_type {
            headers.insert(header::CONTENT_TYPE, ct.clone());
        }
        headers.insert(COALESCED_HEADER, HeaderValue::from(callers));
        if let Some(report) = self.report {
            response.extensions_mut().insert(report);
        }
        response
    }
}
