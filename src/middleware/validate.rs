//! Validate: the body must be a JSON object; validated APIs' payloads must keep Tencent's rules.
//! Runs before rate limiting, so a request that could never succeed spends no token.

use bytes::Bytes;
use http::Request;
use opentelemetry::KeyValue;

use super::check::Check;
use crate::api::Api;
use crate::error::GatewayError;
use crate::traces::Traced;
use crate::validation::{self, RejectKind, Rejection};

#[derive(Debug, Clone, Copy, Default)]
pub struct Validate;

impl Check<Bytes> for Validate {
    fn check(&self, req: &mut Request<Bytes>) -> Result<(), GatewayError> {
        let validated = req.extensions().get::<Api>().and_then(|api| api.validated);
        match validated {
            Some(api) => {
                let facts = api.validate(req.body()).map_err(rejected)?;
                if let Some(traced) = req.extensions().get::<Traced>() {
                    let group = facts.group_id.to_string();
                    traced.annotate(KeyValue::new("chat.group_id", group));
                }
                req.extensions_mut().insert(facts);
            }
            None => validation::validate_object(req.body()).map_err(rejected)?,
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
