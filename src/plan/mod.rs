//! Memory planner: the bytes a training step (or an inference pass) will allocate, by
//! [`Category`], computed from the configuration alone — before anything is allocated.
//!
//! * [`EfficientPlan`] lists every buffer of the memory-efficient path. It is the single
//!   source of truth: [`Network::new`](crate::efficient::Network::new) allocates exactly the
//!   buffers of its plan, and a step allocates nothing more, so the plan *is* the peak
//!   (tested against the byte-counting allocator in `tests/plan.rs`).
//! * [`BaselinePlan`] predicts the peak of the textbook baseline ([`crate::baseline`]) by replaying
//!   its allocation schedule — which buffers it creates and frees, in which order — without
//!   allocating them. The baseline allocates while it runs, so this is a model of its code
//!   rather than a list the code reads; `tests/baseline.rs` checks that it matches the
//!   measured peak byte for byte.
//!
//! All sizes are computed with checked arithmetic: a configuration too large to address is a
//! configuration error, not an overflow.

mod baseline;
mod efficient;

pub use baseline::BaselinePlan;
pub use efficient::{EfficientPlan, Planned, StoragePlan, TrainPlan};

use crate::backend::Category;
use crate::error::{Error, Result};
pub use crate::precision::Dtype;
use serde::Serialize;
use std::collections::BTreeMap;

/// One named buffer of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedBuffer {
    pub name: String,
    pub category: Category,
    pub dtype: Dtype,
    /// Number of elements.
    pub len: usize,
    pub bytes: usize,
}

/// Bytes per category; categories with no bytes are absent.
pub type CategoryBytes = BTreeMap<Category, usize>;

/// `a · b · …` or a configuration error naming `what` when it does not fit in a `usize`.
pub(crate) fn product(what: &str, factors: &[usize]) -> Result<usize> {
    factors.iter().try_fold(1usize, |acc, &f| acc.checked_mul(f)).ok_or_else(|| too_large(what))
}

/// `a + b` or a configuration error naming `what`.
pub(crate) fn sum(what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_add(b).ok_or_else(|| too_large(what))
}

fn too_large(what: &str) -> Error {
    Error::Config(format!("{what} is too large to address"))
}
