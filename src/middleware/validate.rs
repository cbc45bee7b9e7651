//! Validate: the body must be a JSON object; counter APIs' payloads must keep Tencent's rules.
//! Runs before rate limiting, so a request that could never succeed spends no token.

use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{ready, Either, Ready};
use http::Request;
use tower::{Layer, Service};

use super::GatewayResponse;
use crate::api::Api;
use crate::error::GatewayError;
use crate::validation::{self, CounterApi, RejectKind, Rejection};

/// Request extension: what validation learned about a counter request.
#[derive(Debug, Clone)]
pub struct CounterFacts {
    pub api: CounterApi,
    pub group_id: Box<str>,
    /// False for Increase, Decrease and updates without a Mode: such a request must never
    /// be sent twice.
    pub idempotent: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ValidateLayer;

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Validate { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Validate<S> {
    inner: S,
}

impl<S> Service<Request<Bytes>> for Validate<S>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError>,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = Either<Ready<Result<GatewayResponse, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let counter = req.extensions().get::<Api>().and_then(|api| api.counter);
        let checked = match counter {
            Some(api) => validation::validate_counter(api, req.body()).map(|parsed| {
                Some(CounterFacts {
                    api,
                    idempotent: parsed.is_idempotent(api),
                    group_id: parsed.group_id.into(),
                })
            }),
            None => validation::validate_object(req.body()).map(|()| None),
        };
        match checked {
            Ok(facts) => {
                if let Some(facts) = facts {
                    req.extensions_mut().insert(facts);
                }
                Either::Right(self.inner.call(req))
            }
            Err(rejection) => Either::Left(ready(Err(rejected(rejection)))),
        }
    }
}

fn rejected(rejection: Rejection) -> GatewayError {
    match rejection.kind {
        RejectKind::InvalidJson => GatewayError::InvalidJson(rejection.info),
        kind => GatewayError::Validation {
            code: kind.error_code(),
            info: rejection.info,
        },
    }
}
