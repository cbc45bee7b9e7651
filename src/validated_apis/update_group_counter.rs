//! `group_open_http_svc/update_group_counter`: sets, increases or decreases a group's counters.
//! Its group is `GroupId`; only `Mode: "Set"` may be sent twice safely.

use super::{Coalescing, PayloadFacts, ValidatedApi};
use crate::validation::{validate_counter, CounterPayload, Mode, Rejection};

pub const API: ValidatedApi = ValidatedApi {
    name: "group_open_http_svc/update_group_counter",
    path: "/v4/group_open_http_svc/update_group_counter",
    group_member: "GroupId",
    validate,
    idempotent,
    coalesce: Coalescing::CounterIncrements,
    allowed_by_default: true,
};

fn validate(body: &[u8]) -> Result<PayloadFacts, Rejection> {
    validate_counter(CounterPayload::Update, body).map(PayloadFacts::update)
}

/// Increase and Decrease add up when resent. Without a Mode, Tencent's documentation gives no
/// default, so a resend is not known to be safe either.
fn idempotent(facts: &PayloadFacts) -> bool {
    facts
        .update
        .as_ref()
        .is_some_and(|update| update.mode == Some(Mode::Set))
}
