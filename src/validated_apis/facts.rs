//! What validation learned about a request's payload: a request extension for the layers after
//! it (the rate limiter keys on the group; the coalescing layer reads the update).

use crate::validation::{CounterRequest, Mode};

/// Request extension set for every request of a validated API that passed its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadFacts {
    /// The group the call is for, JSON escapes resolved: the key of the group rate limit.
    pub group_id: Box<str>,
    /// What an `update_group_counter` body says; `None` for the other APIs.
    pub update: Option<CounterUpdate>,
}

/// The parts of an `update_group_counter` body that decide how it may be sent or merged. The
/// keys and values are not kept: every update would pay for them, and only the increments that
/// wait in a batch need them (the coalescer reads those from the body).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterUpdate {
    /// `None` when the body has no `Mode`.
    pub mode: Option<Mode>,
    /// Only `GroupId`, `GroupCounter` (entries of only `Key` and `Value`) and `Mode`: a merge
    /// of two such bodies drops nothing either one said.
    pub plain: bool,
}

impl PayloadFacts {
    /// The facts of a body that names a group and nothing else worth keeping.
    pub fn group(request: CounterRequest<'_>) -> Self {
        PayloadFacts {
            group_id: request.group_id.into(),
            update: None,
        }
    }

    /// The facts of an accepted `update_group_counter` body.
    pub fn update(request: CounterRequest<'_>) -> Self {
        PayloadFacts {
            group_id: request.group_id.into(),
            update: Some(CounterUpdate {
                mode: request.mode,
                plain: request.plain,
            }),
        }
    }
}
