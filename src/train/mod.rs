//! Training and evaluation: SGD with Nesterov momentum and weight decay through the
//! backend's fused update, learning-rate schedules, per-epoch test evaluation with running
//! statistics, and checkpoints (see [`crate::checkpoint`]).
//!
//! ```no_run
//! use densenet::backend::cpu::CpuBackend;
//! use densenet::data::{DataSource, Normalization, SyntheticSpec};
//! use densenet::train::{Model, TrainConfig, Trainer};
//! use densenet::DenseNetConfig;
//! use std::sync::Arc;
//!
//! # fn main() -> densenet::Result<()> {
//! let data = DataSource::Synthetic(SyntheticSpec::default()).load()?;
//! let cfg = DenseNetConfig::bc_cifar(22, 12)?;
//! let model = Model::new(&cfg, Normalization::of(&data.train)?, 0)?;
//! let train = TrainConfig { epochs: 5, ..TrainConfig::default() };
//! let mut trainer =
//!     Trainer::new(CpuBackend::new(), model, train, Arc::new(data.train), Arc::new(data.test))?;
//! for m in trainer.fit(None, &mut ())? {
//!     println!("epoch {}: test accuracy {:.1}%", m.epoch, 100.0 * m.test_accuracy);
//! }
//! # Ok(())
//! # }
//! ```

mod evaluate;
mod metrics;
mod model;
mod predict;
mod schedule;
mod trainer;

pub use evaluate::{Evaluation, evaluate};
pub use metrics::{BatchProgress, EpochMetrics, Observer, SkippedImages};
pub use model::Model;
pub use predict::{Prediction, Predictor, input_size};
pub use schedule::Schedule;
pub use trainer::{TrainConfig, Trainer, TrainingState};
