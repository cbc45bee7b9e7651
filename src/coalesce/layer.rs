//! The coalescing layer: after validation, before the rate limit. A mergeable increment joins
//! its group's next batch; the batch's driver (a task of its own, so that a caller hanging up
//! cancels nothing) waits for the group's call in flight, takes one group and one app token
//! (waiting for them up to the callers' `max_wait`), sends one call through the rate-limit,
//! retry and sign layers with [`TokensTaken`], and answers every caller from it
//! ([`super::writes`]). A read of the group rides a waiting batch, joins identical reads, or
//! waits its turn for a token ([`super::reads`]).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::Request;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::group::{Answer, Joined, Member, Registry, Waiter};
use super::merge;
use crate::api::Api;
use crate::config::CoalesceConfig;
use crate::error::GatewayError;
use crate::exchange::{BoxFuture, GatewayResponse};
use crate::metrics::Metrics;
use crate::rate_limit::TokensTaken;
use crate::rate_limit::{RateLimiter, Refusal, Scope};
use crate::validated_apis::{Coalescing, PayloadFacts};

/// Retry-After for a caller whose `max_wait` ran out while its group's call was in flight.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct CoalesceLayer {
    shared: Arc<Shared>,
}

pub(super) struct Shared {
    /// Batches under way and their groups: kept by a reload, so batches in flight finish and
    /// new callers still join them.
    pub registry: Arc<Registry>,
    pub config: CoalesceConfig,
    pub limiter: Arc<dyn RateLimiter>,
    pub metrics: Metrics,
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
                registry: Arc::new(Registry::new()),
                config,
                limiter,
                metrics,
            }),
        }
    }

    /// The same batches and groups under a reloaded config and limiter.
    pub fn reloaded(&self, config: CoalesceConfig, limiter: Arc<dyn RateLimiter>) -> Self {
        CoalesceLayer {
            shared: Arc::new(Shared {
                registry: self.shared.registry.clone(),
                config,
                limiter,
                metrics: self.shared.metrics.clone(),
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
    pub(super) inner: S,
    pub(super) shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for Coalesce<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Coalesce")
    }
}

impl<S> Service<Request<Bytes>> for Coalesce<S>
where
    S: Inner,
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
        let coalescing = api.validated.map_or(Coalescing::Never, |v| v.coalesce);
        if config.enabled && coalescing == Coalescing::CounterIncrements {
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
        } else if (config.reads || config.enabled) && coalescing == Coalescing::CounterReads {
            let group = req.extensions().get::<PayloadFacts>().map(|f| &*f.group_id);
            if let (Some(group), Some(key)) = (group, merge::parse_read(req.body())) {
                let group = group.to_string();
                let reader = self.clone();
                return Either::Right(Box::pin(reader.read(api, group, key, req)));
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
                    group_token: matches!(result, Some(Err(r)) if r.group_spent),
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
    S: Inner,
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
            brought_group_token: group_token,
            trace: parts.extensions.get::<crate::traces::Traced>().cloned(),
        };
        let joined =
            self.shared
                .registry
                .join(&group, member, parts, self.shared.config.max_callers);
        if let Joined::New { id, turn } = joined {
            let driver = self.driver(api, &group);
            tokio::spawn(driver.drive_writes(id, turn));
        }
        async move {
            match rx.await {
                Ok(answer) => answer,
                // The batch's driver ended without answering (it panicked): never expected.
                Err(_) => Err(GatewayError::Internal(
                    "a coalesced batch ended without answering its caller",
                )),
            }
        }
    }

    pub(super) fn driver(&self, api: Api, group: &str) -> Driver<S> {
        Driver {
            ctx: DriverCtx {
                shared: self.shared.clone(),
                api,
                group: Arc::from(group),
            },
            inner: self.inner.clone(),
        }
    }
}

/// The service below the coalescing layer, as the layer's drivers need it: cloned into tasks
/// of their own, so `Send` and `'static`.
pub trait Inner:
    Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> Inner for S where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError, Future: Send>
        + Clone
        + Send
        + 'static
{
}

/// Drives one batch (or one group's shared reads) from its first caller's arrival to the
/// last answer.
pub(super) struct Driver<S> {
    pub ctx: DriverCtx,
    pub inner: S,
}

impl<S: Clone> Driver<S> {
    pub fn cloned(&self) -> Driver<S> {
        Driver {
            ctx: self.ctx.clone(),
            inner: self.inner.clone(),
        }
    }
}

/// What a driver knows besides the inner service: the layer's state, the API and the group.
/// Shared by reference while a driver waits (it is `Sync`, the inner service need not be).
#[derive(Clone)]
pub(super) struct DriverCtx {
    pub shared: Arc<Shared>,
    pub api: Api,
    pub group: Arc<str>,
}

impl DriverCtx {
    /// 10006 (or the app limit's 60007 when that is what stood in the way) for callers that
    /// were never sent.
    pub fn refuse<W: Waiter>(&self, members: Vec<W>, refusal: Option<Refusal>) {
        let members: Vec<W> = members.into_iter().filter(|m| !m.hung_up()).collect();
        if members.is_empty() {
            return;
        }
        let refusal = refusal.unwrap_or(BUSY);
        tracing::info!(
            api = &*self.api.name,
            callers = members.len(),
            scope = refusal.scope.as_str(),
            "coalesced callers waited max_wait without their call being sent; refused, never applied"
        );
        for m in members {
            m.refuse(self.refused(refusal));
        }
    }

    /// The refusal's answer, counted.
    pub fn refused(&self, refusal: Refusal) -> GatewayError {
        refusal.counted(&self.api, Some(&self.group), &self.shared.metrics)
    }
}

/// What a caller whose `max_wait` ran out while its group was busy is told.
pub(super) const BUSY: Refusal = Refusal {
    scope: Scope::Group,
    retry_after: BUSY_RETRY_AFTER,
    group_spent: false,
};
