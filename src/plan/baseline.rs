//! Peak memory of the baseline ([`crate::baseline::BaselineNetwork`]), predicted by
//! replaying its allocation schedule on a ledger: the same buffers, allocated and freed in
//! the same order as the baseline's code does (see `baseline/network.rs`), without
//! allocating them. `tests/baseline.rs` checks the prediction against the measured peak.

use super::{CategoryBytes, Dtype, product, sum};
use crate::backend::Category;
use crate::config::{DenseNetConfig, Geometry, Stem};
use crate::error::Result;
use crate::params::ParamLayout;
use serde::Serialize;

/// The predicted memory of one baseline training step (construction, forward, backward).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BaselinePlan {
    pub geometry: Geometry,
    pub batch: usize,
    pub dtype: Dtype,
    /// Whether SGD momentum is allocated.
    pub optimizer: bool,
    /// Elements of the input batch.
    pub input_len: usize,
    /// Elements of the BN reduction buffer `[Σg | Σg·x̂]` (twice the widest BN).
    pub sums_len: usize,
    /// Bytes allocated when the network is built (parameters, gradients, optimiser state,
    /// running statistics, input and head buffers, reduction buffer).
    pub persistent_bytes: usize,
    /// Bytes the forward pass stores for the backward: O(L²·k).
    pub tape_bytes: usize,
    /// Peak bytes of a training step.
    pub peak_bytes: usize,
    /// Bytes per category at the moment of the peak.
    pub peak_by_category: CategoryBytes,
}

/// Running allocation total, as the backend's `MemoryTracker` counts it.
struct Ledger {
    dtype: Dtype,
    current: usize,
    by_category: CategoryBytes,
    peak: usize,
    peak_by_category: CategoryBytes,
}

impl Ledger {
    fn alloc(&mut self, category: Category, len: usize) -> Result<()> {
        let bytes = product("a baseline buffer", &[len, self.dtype.size()])?;
        self.current = sum("the baseline step", self.current, bytes)?;
        *self.by_category.entry(category).or_default() += bytes;
        if self.current > self.peak {
            self.peak = self.current;
            self.peak_by_category = self.by_category.clone();
        }
        Ok(())
    }

    /// Frees `len` elements of category Baseline (the only category a step frees). Only called
    /// for buffers allocated before, so it cannot underflow.
    fn free(&mut self, len: usize) {
        let bytes = len * self.dtype.size();
        self.current -= bytes;
        *self.by_category.entry(Category::Baseline).or_default() -= bytes;
    }

    fn activations(&mut self, len: usize) -> Result<()> {
        self.alloc(Category::Baseline, len)
    }

    /// A stored BN → ReLU pair whose input (rows × c) is already allocated: statistics, BN
    /// output, ReLU output.
    fn bn_relu(&mut self, rows: usize, c: usize) -> Result<()> {
        self.activations(2 * c)?;
        self.activations(rows * c)?;
        self.activations(rows * c)
    }

    /// Frees a stored BN → ReLU pair with its input.
    fn free_bn_relu(&mut self, rows: usize, c: usize) {
        self.free(3 * rows * c + 2 * c);
    }
}

impl BaselinePlan {
    /// The plan for `batch` images of `height × width` (training; with SGD momentum if
    /// `optimizer`), with the checks `BaselineNetwork::new` relies on.
    pub fn new(
        cfg: &DenseNetConfig,
        batch: usize,
        height: usize,
        width: usize,
        dtype: Dtype,
        optimizer: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        let input_len = product("the input batch", &[batch, height, width, cfg.in_channels])?;
        let geometry = cfg.geometry(height, width)?;
        geometry.check_batch(batch, cfg.stem)?;
        let layout = ParamLayout::new(cfg);
        let (c0, k, bott) = (cfg.init_features, cfg.growth, cfg.bottleneck());
        // The largest buffer of each block bounds every product below, so checking it once
        // makes the unchecked arithmetic that follows safe.
        let mut rows = Vec::with_capacity(geometry.blocks.len());
        for b in &geometry.blocks {
            let p = product("a feature map", &[batch, b.height, b.width])?;
            product("a concatenation", &[p, b.channels.max(bott), 3])?;
            rows.push(p);
        }
        let t_rows = product("the stem output", &[batch, geometry.stem_conv.0, geometry.stem_conv.1])?;
        product("the stem output", &[t_rows, c0, 3])?;
        let max_channels = geometry.blocks.iter().map(|b| b.channels).max().unwrap_or(0);
        let sums_len = 2 * max_channels.max(bott).max(c0);

        let mut m = Ledger {
            dtype,
            current: 0,
            by_category: CategoryBytes::new(),
            peak: 0,
            peak_by_category: CategoryBytes::new(),
        };
        // BaselineNetwork::new
        let n_params = layout.num_params;
        let param_buffers = if optimizer { 3 } else { 2 };
        for len in std::iter::repeat_n(n_params, param_buffers).chain([layout.num_running]) {
            m.alloc(Category::Parameters, len)?;
        }
        let logits = product("the logits", &[batch, cfg.classes])?;
        for len in [input_len, batch, logits, 1, logits] {
            m.alloc(Category::StemHead, len)?;
        }
        m.activations(sums_len)?;
        let persistent_bytes = m.current;

        // forward
        let blocks = &geometry.blocks;
        let imagenet = cfg.stem == Stem::Imagenet;
        if imagenet {
            m.activations(t_rows * c0)?;
            m.bn_relu(t_rows, c0)?;
        }
        m.activations(rows[0] * c0)?;
        for (b, g) in blocks.iter().enumerate() {
            let p = rows[b];
            for l in 0..g.layers {
                let c = g.layer_in(l, k);
                m.activations(p * c)?;
                m.bn_relu(p, c)?;
                m.activations(p * bott)?;
                m.bn_relu(p, bott)?;
                m.activations(p * k)?;
            }
            m.activations(p * g.channels)?;
            m.bn_relu(p, g.channels)?;
            match blocks.get(b + 1) {
                Some(next) => {
                    m.activations(p * next.c0)?;
                    m.activations(rows[b + 1] * next.c0)?;
                }
                None => m.activations(batch * g.channels)?,
            }
        }
        let tape_bytes = m.current - persistent_bytes;

        // backward: head, then each block's layers in reverse and the transition before it
        let last = blocks.len() - 1;
        let (p, c) = (rows[last], blocks[last].channels);
        m.activations(batch * c)?;
        m.free(batch * c);
        m.activations(p * c)?;
        m.free(batch * c);
        m.free_bn_relu(p, c);
        for b in (0..blocks.len()).rev() {
            let (g, p) = (&blocks[b], rows[b]);
            // dL/d(each feature of block b), split off the concatenation's gradient.
            m.activations(p * g.c0)?;
            for _ in 0..g.layers {
                m.activations(p * k)?;
            }
            m.free(p * g.channels);
            for l in (0..g.layers).rev() {
                let c = g.layer_in(l, k);
                m.free(p * k); // the layer's output
                m.activations(p * bott)?;
                m.free(p * k); // its gradient
                m.free_bn_relu(p, bott);
                m.activations(p * c)?;
                m.free(p * bott);
                m.free_bn_relu(p, c);
                m.free(p * c);
            }
            m.free(p * g.c0); // the block input
            if b > 0 {
                let (prev, pp) = (&blocks[b - 1], rows[b - 1]);
                m.activations(pp * g.c0)?;
                m.free(p * g.c0 + pp * g.c0);
                m.activations(pp * prev.channels)?;
                m.free(pp * g.c0);
                m.free_bn_relu(pp, prev.channels);
            } else if imagenet {
                m.activations(t_rows * c0)?;
                m.free(p * c0);
                m.free_bn_relu(t_rows, c0);
                m.free(t_rows * c0);
            } else {
                m.free(p * c0);
            }
        }

        Ok(BaselinePlan {
            geometry,
            batch,
            dtype,
            optimizer,
            input_len,
            sums_len,
            persistent_bytes,
            tape_bytes,
            peak_bytes: m.peak,
            peak_by_category: m.peak_by_category.into_iter().filter(|(_, v)| *v > 0).collect(),
        })
    }
}
