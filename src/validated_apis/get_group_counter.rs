//! `group_open_http_svc/get_group_counter`: reads a group's counters, so it is idempotent.
//! Its group is `GroupId`; `GroupCounterKeys` (optional) picks the counters.

use super::{Coalescing, PayloadFacts, ValidatedApi};
use crate::validation::{validate_counter, CounterPayload, Rejection};

pub const API: ValidatedApi = ValidatedApi {
    name: "group_open_http_svc/get_group_counter",
    path: "/v4/group_open_http_svc/get_group_counter",
    group_member: "GroupId",
    validate,
    idempotent: |_| true,
    coalesce: Coalescing::CounterReads,
    allowed_by_default: true,
};

fn validate(body: &[u8]) -> Result<PayloadFacts, Rejection> {
    validate_counter(CounterPayload::Get, body).map(PayloadFacts::group)
}
