//! `group_open_http_svc/delete_group_counter`: deleting twice leaves what deleting once does.
//! Its group is `GroupId`; `GroupCounterKeys` (optional; absent: all) picks the counters.

use super::{Coalescing, PayloadFacts, ValidatedApi};
use crate::validation::{validate_counter, CounterPayload, Rejection};

pub const API: ValidatedApi = ValidatedApi {
    name: "group_open_http_svc/delete_group_counter",
    path: "/v4/group_open_http_svc/delete_group_counter",
    group_member: "GroupId",
    validate,
    idempotent: |_| true,
    coalesce: Coalescing::Never,
    allowed_by_default: true,
};

fn validate(body: &[u8]) -> Result<PayloadFacts, Rejection> {
    validate_counter(CounterPayload::Delete, body).map(PayloadFacts::group)
}
