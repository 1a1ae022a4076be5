//! Feature storage of one dense block (design §2): NHWC with a channel pitch equal to the
//! block's final width, so layer l reads the prefix `[0, c_l)` and writes `[c_l, c_l + k)` —
//! the concatenation is the growing prefix and costs nothing.

use crate::backend::{Backend, Category, Mat, Spatial, StatsRef};
use crate::config::BlockGeometry;
use crate::error::Result;

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
    /// Allocates the storage; statistics are allocated only when training (`with_stats`).
    pub fn new(backend: &B, geom: BlockGeometry, batch: usize, with_stats: bool) -> Result<Self> {
        let pixels = batch * geom.hw();
        let data = backend.alloc(pixels * geom.channels, Category::FeatureStorage)?;
        let stats_len = if with_stats { 2 * geom.channels } else { 0 };
        let stats = backend.alloc(stats_len, Category::FeatureStorage)?;
        Ok(FeatureStorage { geom, batch, data, stats })
    }

    /// Bytes [`FeatureStorage::new`] allocates.
    pub fn bytes(geom: &BlockGeometry, batch: usize, with_stats: bool) -> usize {
        4 * (batch * geom.hw() * geom.channels + if with_stats { 2 * geom.channels } else { 0 })
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
