//! Reads of a group's counters. A read of keys that the group's waiting batch will set is
//! answered from that batch's answer (it spends no token); identical reads share one call,
//! sent once the one in flight returns; with write coalescing on, a read the group's limit
//! refuses waits its turn for the group's next token, within `max_wait`, like a batch.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::Request;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower::ServiceExt;

use super::answer::SharedAnswer;
use super::group::{Answer, ReadJoin, Reader, Rider, Waiter};
use super::layer::{Coalesce, Driver, DriverCtx, Inner, BUSY};
use super::line::{take_tokens, Held, OnApp, Tokens, Waiters};
use super::merge::ReadKey;
use super::trace;
use crate::api::Api;
use crate::error::GatewayError;
use crate::rate_limit::Refusal;
use crate::rate_limit::TokensTaken;

impl<S> Coalesce<S>
where
    S: Inner,
{
    pub(super) async fn read(
        self,
        api: Api,
        group: String,
        key: ReadKey,
        req: Request<Bytes>,
    ) -> Answer {
        let config = &self.shared.config;
        let deadline = Instant::now() + config.max_wait;
        if let (true, Some(keys)) = (config.enabled, &key.keys) {
            let (tx, rx) = oneshot::channel();
            let rider = || Rider {
                keys: keys.clone(),
                api: api.clone(),
                deadline,
                tx,
            };
            if self.shared.registry.ride(&group, keys, rider) {
                if let Ok(Some(answer)) = rx.await {
                    return answer;
                }
                // The batch went unsent or failed: the read goes on its own, in what is left
                // of its max_wait.
            }
        }
        if config.reads {
            self.read_shared(api, group, key, req, deadline).await
        } else {
            self.read_alone(api, &group, req, deadline).await
        }
    }

    /// Joins the group's next shared read with the same keys (or starts it).
    async fn read_shared(
        self,
        api: Api,
        group: String,
        key: ReadKey,
        req: Request<Bytes>,
        deadline: Instant,
    ) -> Answer {
        let (tx, rx) = oneshot::channel();
        let max = self.shared.config.max_callers;
        let reader = Reader { tx, deadline };
        match self
            .shared
            .registry
            .join_read(&group, key.clone(), req, reader, max)
        {
            ReadJoin::Full(req) => return self.read_alone(api, &group, *req, deadline).await,
            ReadJoin::Joined => {}
            ReadJoin::New => {
                tokio::spawn(self.driver(api, &group).drive_reads(key));
            }
        }
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err(GatewayError::Internal(
                "a shared read ended without answering its caller",
            )),
        }
    }

    /// A read sent on its own, after its turn for the group's token when writes coalesce.
    async fn read_alone(
        self,
        api: Api,
        group: &str,
        mut req: Request<Bytes>,
        deadline: Instant,
    ) -> Answer {
        if self.shared.config.enabled {
            let ctx = DriverCtx {
                shared: self.shared.clone(),
                api,
                group: Arc::from(group),
            };
            let mut waiting = Alone {
                deadline: Some(deadline),
                refusal: None,
            };
            let from = SystemTime::now();
            let tokens = ctx.take_read_tokens(&mut waiting).await;
            let taken = matches!(tokens, Tokens::Taken);
            trace::read_token_wait(&req, &ctx.api.name, from, taken);
            match tokens {
                Tokens::Taken => {
                    req.extensions_mut().insert(TokensTaken);
                }
                Tokens::Gone => return Err(ctx.refused(waiting.refusal.unwrap_or(BUSY))),
                Tokens::App(refusal) => return Err(ctx.refused(refusal)),
            }
        }
        self.inner.oneshot(req).await
    }
}

impl<S> Driver<S>
where
    S: Inner,
{
    /// Sends the group's shared reads with these keys, one at a time, until nobody waits.
    pub async fn drive_reads(self, key: ReadKey) {
        let ctx = &self.ctx;
        while let Some((mut req, waiting)) = ctx.shared.registry.take_reads(&ctx.group, &key) {
            let mut readers = Held { ctx, list: waiting };
            if ctx.shared.config.enabled {
                let from = SystemTime::now();
                let tokens = ctx.take_read_tokens(&mut readers).await;
                let taken = matches!(tokens, Tokens::Taken);
                trace::read_token_wait(&req, &ctx.api.name, from, taken);
                match tokens {
                    Tokens::Taken => {
                        req.extensions_mut().insert(TokensTaken);
                    }
                    Tokens::Gone => continue,
                    Tokens::App(refusal) => {
                        for r in readers.list {
                            r.refuse(ctx.refused(refusal));
                        }
                        continue;
                    }
                }
            }
            let waiting = readers.list;
            let n = waiting.len();
            if n == 0 {
                continue;
            }
            ctx.api.metrics(&ctx.shared.metrics).coalesce_call(n);
            let result = self.inner.clone().oneshot(req).await;
            answer_readers(result, waiting).await;
        }
    }
}

async fn answer_readers(result: Answer, waiting: Vec<Reader>) {
    let n = waiting.len();
    match (result, n) {
        (result, 1) => {
            if let Some(r) = waiting.into_iter().next() {
                let _ = r.tx.send(result);
            }
        }
        (Err(e), _) => {
            for r in waiting {
                let _ = r.tx.send(Err(e.clone()));
            }
        }
        (Ok(response), _) => {
            let answer = SharedAnswer::split(response).await;
            for r in waiting {
                let _ = r.tx.send(Ok(answer.answer(answer.body.clone(), n)));
            }
        }
    }
}

impl DriverCtx {
    /// A read's tokens: its turn in the group's line, then the group's and the app's; an app
    /// refusal is final at once.
    async fn take_read_tokens(&self, waiting: &mut impl Waiters) -> Tokens {
        take_tokens(
            &self.shared.registry,
            &*self.shared.limiter,
            &self.api,
            &self.group,
            false,
            OnApp::Refuse,
            waiting,
        )
        .await
    }
}

/// One read waiting for its tokens alone.
struct Alone {
    deadline: Option<Instant>,
    /// Why it gave up, when its max_wait ran out.
    refusal: Option<Refusal>,
}

impl Waiters for Alone {
    fn earliest(&self) -> Option<Instant> {
        self.deadline
    }

    fn expire(&mut self, before: Instant, refusal: Option<Refusal>) -> bool {
        if self.deadline.is_some_and(|d| d <= before) {
            self.deadline = None;
            self.refusal = refusal;
        }
        self.deadline.is_some()
    }
}
