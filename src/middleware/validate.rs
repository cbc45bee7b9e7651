//! Validate: the body must be a JSON object; counter APIs' payloads must keep Tencent's rules.
//! Runs before rate limiting, so a request that could never succeed spends no token.

use bytes::Bytes;
use http::Request;

use super::check::Check;
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
pub struct Validate;

impl Check<Bytes> for Validate {
    fn check(&self, req: &mut Request<Bytes>) -> Result<(), GatewayError> {
        let counter = req.extensions().get::<Api>().and_then(|api| api.counter);
        let facts = match counter {
            Some(api) => {
                let parsed = validation::validate_counter(api, req.body()).map_err(rejected)?;
                Some(CounterFacts {
                    api,
                    idempotent: parsed.is_idempotent(api),
                    group_id: parsed.group_id.into(),
                })
            }
            None => {
                validation::validate_object(req.body()).map_err(rejected)?;
                None
            }
        };
        if let Some(facts) = facts {
            req.extensions_mut().insert(facts);
        }
        Ok(())
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
