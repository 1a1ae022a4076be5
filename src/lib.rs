//! Memory-efficient DenseNet-BC training: shared feature storage, fused BN-ReLU-conv ops,
//! per-channel statistics computed once, and a deferred batch-norm backward correction, over
//! interchangeable backends (plain Rust on the CPU; hand-written CUDA kernels on NVIDIA GPUs).
//!
//! See `docs/ARCHITECTURE.md` for how the pieces fit together.

pub mod backend;
pub mod baseline;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod efficient;
#[cfg(feature = "cuda-emu")]
pub mod emu;
pub mod error;
pub mod files;
pub mod info;
pub mod kernels;
pub mod params;
pub mod plan;
pub mod precision;
pub mod profile;
pub mod reference;
pub mod state_dict;
pub mod train;
pub mod verify;

pub use config::{DenseNetConfig, Stem};
pub use error::{Error, Result};
pub use precision::{Dtype, Precision};
