//! The memory-efficient path: shared feature storage per dense block and one orchestrator,
//! generic over the [`Backend`](crate::backend::Backend), for forward and backward.

mod network;
mod storage;

pub use network::{BnInput, Mode, Network, Options};
pub use storage::FeatureStorage;
