//! Feature storage of one dense block ("Feature storage with a channel pitch" in
//! `docs/ARCHITECTURE.md`): NHWC with a channel pitch equal to the
//! block's final width, so layer l reads the prefix `[0, c_l)` and writes `[c_l, c_l + k)` —
//! the concatenation is the growing prefix and costs nothing.

use crate::backend::{Backend, Mat, Spatial, StatsRef};
use crate::config::BlockGeometry;
use crate::error::Result;
use crate::plan::StoragePlan;

/// The shared buffer S of one dense block and the batch statistics of its channels.
pub struct FeatureStorage<B: Backend> {
    pub geom: BlockGeometry,
    pub batch: usize,
    /// P × C activations, P = batch·H·W, C = `geom.channels`.
    pub data: B::Buf,
    /// `[mean (C) | biased variance (C)]`, each channel's written once, when the channel is
    /// produced, and read by every later layer.
    pub stats: B::Buf,
}

impl<B: Backend> FeatureStorage<B> {
    /// Allocates the storage and its statistics as planned (the statistics are empty in eval
    /// mode, where the running statistics are used).
    pub fn new(backend: &B, geom: BlockGeometry, batch: usize, plan: &StoragePlan) -> Result<Self> {
        let data = backend.alloc_as(plan.data.len, plan.data.dtype, plan.data.category)?;
        let stats = backend.alloc_as(plan.stats.len, plan.stats.dtype, plan.stats.category)?;
        Ok(FeatureStorage { geom, batch, data, stats })
    }

    pub fn pixels(&self) -> usize {
        self.batch * self.geom.hw()
    }

    pub fn spatial(&self) -> Spatial {
        Spatial { n: self.batch, h: self.geom.height, w: self.geom.width }
    }

    /// Channels `[start, start + cols)` of every pixel.
    pub fn columns(&self, start: usize, cols: usize) -> Mat {
        Mat { offset: start, rows: self.pixels(), cols, ld: self.geom.channels }
    }

    /// All C channels.
    pub fn all(&self) -> Mat {
        self.columns(0, self.geom.channels)
    }

    /// Batch statistics of channels starting at `start`.
    pub fn stats_from(&self, start: usize) -> StatsRef<'_, B::Buf> {
        StatsRef { stats: &self.stats, mean: start, var: self.geom.channels + start }
    }
}
