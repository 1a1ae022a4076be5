//! The memory-efficient DenseNet, written once over any [`Backend`] (the reasons for its
//! layout: "Why it is built this way" in `docs/ARCHITECTURE.md`).
//!
//! Forward keeps only: each block's feature storage S (every channel written once), the
//! per-channel batch statistics, the bottleneck statistics of every layer (2·4k floats), and
//! for the ImageNet stem its conv output. No concatenation, BN output or ReLU output is ever
//! stored. Backward walks the layers in reverse with two gradient storages (ping-pong),
//! recomputes only the bottleneck output Z, and applies the non-local part of every BN
//! backward once per channel (the deferred correction).

use super::storage::FeatureStorage;
use crate::backend::{At, Backend, BnGradTarget, BnRef, ConvGeom, Mat, SgdParams, Spatial, StatsRef};
use crate::backend::{AtMut, BnSums, LinearGrads, StatsMut, View, ViewMut};
use crate::config::{DenseNetConfig, Geometry, Stem};
use crate::error::{Error, Result};
use crate::params::{BnLayout, BnSite, ParamLayout};
use crate::plan::{EfficientPlan, Planned};
use serde::Serialize;

/// Training (batch statistics, gradients) or inference (running statistics, no gradient
/// buffers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Train,
    Eval,
}

/// What a [`Network`] allocates besides the essentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    /// Also compute dL/d(input image) (only verification needs it).
    pub input_grad: bool,
    /// Allocate SGD momentum buffers for [`Network::sgd_step`] (training only).
    pub optimizer: bool,
}

impl Options {
    /// Training: batch statistics, gradients.
    pub fn train() -> Self {
        Options { mode: Mode::Train, input_grad: false, optimizer: false }
    }
    /// Inference: running statistics, no gradient buffers.
    pub fn eval() -> Self {
        Options { mode: Mode::Eval, input_grad: false, optimizer: false }
    }
    /// Also allocate the optimiser state.
    pub fn with_optimizer(self) -> Self {
        Options { optimizer: true, ..self }
    }
}

/// The input of one BN, downloaded: `values[p·pitch + c]` for pixel p = (n·H + y)·W + x and
/// channel c < `channels`, with the batch statistics of those channels.
#[derive(Clone, Debug)]
pub struct BnInput {
    pub values: Vec<f32>,
    pub pitch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// Buffers that exist only in training mode.
struct TrainState<B: Backend> {
    grads: B::Buf,
    /// Gradient ping-pong storages: block b uses `g[b % 2]`; each is sized for the largest
    /// block (and for the ImageNet stem's conv-output gradient, which reuses `g[1]`).
    g: [B::Buf; 2],
    /// Deferred BN correction accumulators of the block being back-propagated:
    /// `[α (max C) | β (max C)]`.
    corr: B::Buf,
    /// Offset of β in `corr` (the largest block width).
    corr_half: usize,
    /// Per-channel reductions `[Σg | Σg·x̂]` of the BN being back-propagated.
    sums: B::Buf,
    /// Gradient of the bottleneck output (g2, then dZ in place).
    dz: B::Buf,
    /// `[mean | var]` of every layer's bottleneck output, `2·bottleneck` floats per layer.
    zstats: B::Buf,
    /// `[mean | var]` of the ImageNet stem's conv output.
    stem_stats: B::Buf,
    /// SGD momentum, parameter layout (with `Options::optimizer`).
    velocity: Option<B::Buf>,
    labels: B::Buf,
    loss: B::Buf,
    dlogits: B::Buf,
    dpooled: B::Buf,
    input_grad: Option<B::Buf>,
}

/// A DenseNet-BC instantiated for one batch size and image size on one backend.
pub struct Network<B: Backend> {
    backend: B,
    cfg: DenseNetConfig,
    layout: ParamLayout,
    geometry: Geometry,
    batch: usize,
    /// What the network was built for.
    mode: Mode,
    /// BN mode of the forward pass being run or last run.
    pass: Mode,
    /// Whether a training forward has run since the last backward (backward needs one).
    pending_backward: bool,
    params: B::Buf,
    running: B::Buf,
    /// Input batch, NHWC.
    input: B::Buf,
    /// ImageNet stem: conv output before BN-ReLU-maxpool (kept for the backward).
    stem_out: B::Buf,
    storages: Vec<FeatureStorage<B>>,
    /// Bottleneck output Z of the layer being computed (workspace shared by all layers).
    z: B::Buf,
    pooled: B::Buf,
    logits: B::Buf,
    train: Option<TrainState<B>>,
}

impl<B: Backend> Network<B> {
    /// Allocates every buffer the network needs for `batch` images of `height × width`:
    /// nothing is allocated later, so the peak of a step is known before it runs.
    pub fn new(
        backend: B,
        cfg: &DenseNetConfig,
        batch: usize,
        height: usize,
        width: usize,
        opts: Options,
    ) -> Result<Self> {
        // Every buffer comes from the plan, so the planner's prediction is the allocation.
        let plan = EfficientPlan::new(cfg, batch, height, width, backend.precision().storage(), opts)?;
        backend.ensure_fits("the network", plan.total_bytes)?;
        let alloc = |p: Planned| backend.alloc_as(p.len, p.dtype, p.category);
        let layout = ParamLayout::new(cfg);

        let params = alloc(plan.params)?;
        let running = alloc(plan.running)?;
        let input = alloc(plan.input)?;
        let stem_out = alloc(plan.stem_out)?;
        let storages = plan
            .storages
            .iter()
            .zip(&plan.geometry.blocks)
            .map(|(s, g)| FeatureStorage::new(&backend, *g, batch, s))
            .collect::<Result<Vec<_>>>()?;
        let z = alloc(plan.z)?;
        let pooled = alloc(plan.pooled)?;
        let logits = alloc(plan.logits)?;

        let train = match &plan.train {
            Some(t) => Some(TrainState {
                grads: alloc(t.grads)?,
                g: [alloc(t.g[0])?, alloc(t.g[1])?],
                corr: alloc(t.corr)?,
                corr_half: t.corr_half,
                sums: alloc(t.sums)?,
                dz: alloc(t.dz)?,
                zstats: alloc(t.zstats)?,
                stem_stats: alloc(t.stem_stats)?,
                velocity: t.velocity.map(alloc).transpose()?,
                labels: alloc(t.labels)?,
                loss: alloc(t.loss)?,
                dlogits: alloc(t.dlogits)?,
                dpooled: alloc(t.dpooled)?,
                input_grad: t.input_grad.map(alloc).transpose()?,
            }),
            None => None,
        };
        let mut net = Network {
            backend,
            cfg: cfg.clone(),
            layout,
            geometry: plan.geometry,
            batch,
            mode: opts.mode,
            pass: opts.mode,
            pending_backward: false,
            params,
            running,
            input,
            stem_out,
            storages,
            z,
            pooled,
            logits,
            train,
        };
        let running = net.layout.init_running();
        net.backend.upload(&mut net.running, 0, &running)?;
        Ok(net)
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn config(&self) -> &DenseNetConfig {
        &self.cfg
    }
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Loads parameters (layout of [`ParamLayout`]) and running statistics.
    pub fn set_params(&mut self, params: &[f32], running: &[f32]) -> Result<()> {
        expect_len("parameters", params.len(), self.layout.num_params)?;
        expect_len("running statistics", running.len(), self.layout.num_running)?;
        self.backend.upload(&mut self.params, 0, params)?;
        self.backend.upload(&mut self.running, 0, running)
    }

    pub fn params(&self) -> Result<Vec<f32>> {
        self.backend.download(&self.params, 0, self.layout.num_params)
    }

    pub fn running(&self) -> Result<Vec<f32>> {
        self.backend.download(&self.running, 0, self.layout.num_running)
    }

    /// Parameter gradients of the last [`Network::backward`] (training mode only).
    pub fn grads(&self) -> Result<Vec<f32>> {
        let t = self.train_state("gradients")?;
        self.backend.download(&t.grads, 0, self.layout.num_params)
    }

    /// Loads a batch: `images` NHWC (`batch × H × W × in_channels`), `labels` class indices
    /// (needed in training mode only; pass `&[]` in eval mode).
    pub fn set_batch(&mut self, images: &[f32], labels: &[u32]) -> Result<()> {
        let g = &self.geometry;
        expect_len("images", images.len(), self.batch * g.height * g.width * self.cfg.in_channels)?;
        self.backend.upload(&mut self.input, 0, images)?;
        if let Some(t) = self.train.as_mut() {
            expect_len("labels", labels.len(), self.batch)?;
            if let Some(bad) = labels.iter().find(|&&l| l as usize >= self.cfg.classes) {
                return Err(Error::Shape(format!(
                    "label {bad} out of range for {} classes",
                    self.cfg.classes
                )));
            }
            let as_f32: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
            self.backend.upload(&mut t.labels, 0, &as_f32)?;
        }
        Ok(())
    }

    pub fn logits(&self) -> Result<Vec<f32>> {
        self.backend.download(&self.logits, 0, self.batch * self.cfg.classes)
    }

    /// Mean cross-entropy of the last training forward.
    pub fn loss(&self) -> Result<f32> {
        let t = self.train_state("the loss")?;
        Ok(self.backend.download(&t.loss, 0, 1)?[0])
    }

    /// dL/d(images), NHWC, of the last backward (needs `Options::input_grad`).
    pub fn input_grad(&self) -> Result<Vec<f32>> {
        let t = self.train_state("the input gradient")?;
        let buf = t
            .input_grad
            .as_ref()
            .ok_or_else(|| Error::Config("the network was built without `input_grad`".into()))?;
        let g = &self.geometry;
        self.backend.download(buf, 0, self.batch * g.height * g.width * self.cfg.in_channels)
    }

    /// The input of the BN at `site` in the last training forward, with the batch statistics
    /// it was normalised with — for inspecting activations and for reproducing the backend's
    /// ReLU decisions. A bottleneck input (`Norm2`) is not stored; it is recomputed, exactly
    /// as backward does.
    pub fn bn_input(&mut self, site: BnSite) -> Result<BnInput> {
        let Some(t) = self.train.as_ref() else {
            return Err(Error::Config("BN inputs are inspected in training mode only".into()));
        };
        let norm = self.layout.bn(site).ok_or_else(|| Error::Config(format!("no BN at {site:?}")))?;
        let be = &self.backend;
        let channels = norm.channels;
        let download_stats = |stats: StatsRef<'_, B::Buf>| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((
                be.download(stats.stats, stats.mean, channels)?,
                be.download(stats.stats, stats.var, channels)?,
            ))
        };
        let from_storage = |b: usize| -> Result<BnInput> {
            let s = &self.storages[b];
            let (mean, var) = download_stats(s.stats_from(0))?;
            Ok(BnInput {
                values: be.download(&s.data, 0, s.pixels() * s.geom.channels)?,
                pitch: s.geom.channels,
                channels,
                height: s.geom.height,
                width: s.geom.width,
                mean,
                var,
            })
        };
        match site {
            BnSite::Norm1 { block, .. } | BnSite::Transition { block } => from_storage(block),
            BnSite::Norm5 => from_storage(self.storages.len() - 1),
            BnSite::Norm0 => {
                let (h, w) = self.geometry.stem_conv;
                let (mean, var) = download_stats(StatsRef { stats: &t.stem_stats, mean: 0, var: channels })?;
                let values = be.download(&self.stem_out, 0, self.batch * h * w * channels)?;
                Ok(BnInput { values, pitch: channels, channels, height: h, width: w, mean, var })
            }
            BnSite::Norm2 { block, layer } => {
                let lay = self.layout.blocks[block][layer];
                let s = &self.storages[block];
                let zm = Mat::dense(0, s.pixels(), channels);
                let bn1 = bn_ref(self.pass, &lay.norm1, s.stats_from(0), &self.params, &self.running);
                let w1 = At { buf: &self.params, offset: lay.conv1 };
                be.bn_relu_conv1x1_fwd(
                    View::new(&s.data, s.columns(0, lay.c_in)).bn_relu(bn1),
                    w1,
                    ViewMut::new(&mut self.z, zm),
                )?;
                let g = self.global_layer(block, layer);
                let (mean, var) = download_stats(zstats_ref(&t.zstats, g, channels))?;
                Ok(BnInput {
                    values: be.download(&self.z, 0, s.pixels() * channels)?,
                    pitch: channels,
                    channels,
                    height: s.geom.height,
                    width: s.geom.width,
                    mean,
                    var,
                })
            }
        }
    }

    /// One SGD step on all parameters with the gradients of the last backward (needs
    /// `Options::optimizer`).
    pub fn sgd_step(&mut self, hp: SgdParams) -> Result<()> {
        let n = self.layout.num_params;
        let t = self.train.as_mut().ok_or_else(|| Error::Config("SGD needs training mode".into()))?;
        let v = t.velocity.as_mut().ok_or_else(no_optimizer)?;
        self.backend.sgd_update(&mut self.params, &t.grads, v, n, hp)
    }

    /// Which of the parameters and the running statistics hold a NaN or an infinity, if
    /// either does: the divergence check of a training step, run after its SGD update. One
    /// `channel_stats` reduction over each flat buffer, read as a single column: its mean is
    /// finite exactly when every element is (the sum is taken in double precision and the
    /// mean of finite f32 values fits an f32). The results go to the BN reduction sums,
    /// which nothing reads between a step's backward and the next step's.
    pub fn non_finite_state(&mut self) -> Result<Option<&'static str>> {
        let (params, running) = (self.layout.num_params, self.layout.num_running);
        let t = self
            .train
            .as_mut()
            .ok_or_else(|| Error::Config("the divergence check needs training mode".into()))?;
        // Means at 0 and 2; both variances (unused) at 1.
        self.backend.channel_stats(
            View::new(&self.params, Mat::dense(0, params, 1)),
            StatsMut::new(&mut t.sums, 0, 1),
        )?;
        self.backend.channel_stats(
            View::new(&self.running, Mat::dense(0, running, 1)),
            StatsMut::new(&mut t.sums, 2, 1),
        )?;
        let means = self.backend.download(&t.sums, 0, 3)?;
        Ok(if !means[0].is_finite() {
            Some("parameters")
        } else if !means[2].is_finite() {
            Some("running statistics")
        } else {
            None
        })
    }

    /// SGD momentum buffer (parameter layout).
    pub fn velocity(&self) -> Result<Vec<f32>> {
        let t = self.train_state("the optimiser state")?;
        let v = t.velocity.as_ref().ok_or_else(no_optimizer)?;
        self.backend.download(v, 0, self.layout.num_params)
    }

    pub fn set_velocity(&mut self, velocity: &[f32]) -> Result<()> {
        expect_len("velocity", velocity.len(), self.layout.num_params)?;
        let t = self
            .train
            .as_mut()
            .ok_or_else(|| Error::Config("the optimiser state exists only in training mode".into()))?;
        let v = t.velocity.as_mut().ok_or_else(no_optimizer)?;
        self.backend.upload(v, 0, velocity)
    }

    fn train_state(&self, what: &str) -> Result<&TrainState<B>> {
        self.train.as_ref().ok_or_else(|| Error::Config(format!("{what} exists only in training mode")))
    }

    fn input_spatial(&self) -> Spatial {
        Spatial { n: self.batch, h: self.geometry.height, w: self.geometry.width }
    }

    fn stem_geom(&self) -> ConvGeom {
        match self.cfg.stem {
            Stem::Cifar => ConvGeom { kernel: 3, stride: 1, pad: 1 },
            Stem::Imagenet => ConvGeom { kernel: 7, stride: 2, pad: 3 },
        }
    }

    // ---------------------------------------------------------------------------------------
    // forward
    // ---------------------------------------------------------------------------------------

    /// Forward pass. Built for training: batch statistics, running statistics updated, loss
    /// and its gradient w.r.t. the logits computed. Built for eval: as [`Network::forward_eval`].
    pub fn forward(&mut self) -> Result<()> {
        self.run_forward(self.mode)
    }

    /// Inference forward with the running statistics (logits only; nothing is updated),
    /// whatever the network was built for.
    pub fn forward_eval(&mut self) -> Result<()> {
        self.run_forward(Mode::Eval)
    }

    fn run_forward(&mut self, pass: Mode) -> Result<()> {
        self.pass = pass;
        self.pending_backward = false;
        self.stem_forward()?;
        for b in 0..self.storages.len() {
            for l in 0..self.storages[b].geom.layers {
                self.layer_forward(b, l)?;
            }
            if b + 1 < self.storages.len() {
                self.transition_forward(b)?;
            }
        }
        self.head_forward()?;
        self.pending_backward = pass == Mode::Train;
        Ok(())
    }

    /// A BN whose statistics are the batch statistics `stats` (training) or the layer's
    /// running statistics (eval).
    fn bn<'a>(&'a self, norm: &BnLayout, stats: StatsRef<'a, B::Buf>) -> BnRef<'a, B::Buf> {
        bn_ref(self.pass, norm, stats, &self.params, &self.running)
    }

    /// Updates a BN layer's running statistics from batch statistics (training only).
    fn update_running(&mut self, norm: BnLayout, source: StatsSource, count: usize) -> Result<()> {
        if self.pass != Mode::Train {
            return Ok(());
        }
        let Some(t) = self.train.as_ref() else { return Ok(()) };
        let stats = match source {
            StatsSource::Storage(b, start) => self.storages[b].stats_from(start),
            StatsSource::Bottleneck(layer) => zstats_ref(&t.zstats, layer, self.cfg.bottleneck()),
            StatsSource::Stem => StatsRef { stats: &t.stem_stats, mean: 0, var: norm.channels },
        };
        self.backend.update_running_stats(
            stats,
            norm.channels,
            count,
            StatsMut::new(&mut self.running, norm.running_mean, norm.running_var),
        )
    }

    /// Batch statistics of freshly written storage channels `[start, start + cols)`.
    fn storage_stats(&mut self, b: usize, start: usize, cols: usize) -> Result<()> {
        if self.pass == Mode::Eval {
            return Ok(());
        }
        let s = &mut self.storages[b];
        let c = s.geom.channels;
        let m = s.columns(start, cols);
        self.backend.channel_stats(View::new(&s.data, m), StatsMut::new(&mut s.stats, start, c + start))
    }

    fn stem_forward(&mut self) -> Result<()> {
        let c0 = self.cfg.init_features;
        let geom = self.stem_geom();
        let w = At { buf: &self.params, offset: self.layout.stem.conv };
        let in_shape = self.input_spatial();
        let xm = Mat::dense(0, in_shape.pixels(), self.cfg.in_channels);
        match self.layout.stem.norm {
            None => {
                let s = &mut self.storages[0];
                let ym = s.columns(0, c0);
                self.backend.conv_fwd(
                    View::new(&self.input, xm),
                    in_shape,
                    geom,
                    w,
                    ViewMut::new(&mut s.data, ym),
                )?;
            }
            Some(norm) => {
                let t_shape = geom.out(in_shape);
                let tm = Mat::dense(0, t_shape.pixels(), c0);
                self.backend.conv_fwd(
                    View::new(&self.input, xm),
                    in_shape,
                    geom,
                    w,
                    ViewMut::new(&mut self.stem_out, tm),
                )?;
                if self.pass == Mode::Train
                    && let Some(t) = self.train.as_mut()
                {
                    self.backend.channel_stats(
                        View::new(&self.stem_out, tm),
                        StatsMut::new(&mut t.stem_stats, 0, c0),
                    )?;
                }
                let stem_stats = match &self.train {
                    Some(t) => StatsRef { stats: &t.stem_stats, mean: 0, var: c0 },
                    None => StatsRef { stats: &self.running, mean: 0, var: 0 },
                };
                // Split the borrow: BN reads params/running/stats, the max-pool writes S.
                let bn = bn_ref(self.pass, &norm, stem_stats, &self.params, &self.running);
                let s = &mut self.storages[0];
                let ym = s.columns(0, c0);
                self.backend.bn_relu_maxpool_fwd(
                    View::new(&self.stem_out, tm).bn_relu(bn),
                    t_shape,
                    ViewMut::new(&mut s.data, ym),
                )?;
                self.update_running(norm, StatsSource::Stem, t_shape.pixels())?;
            }
        }
        self.storage_stats(0, 0, c0)
    }

    fn layer_forward(&mut self, b: usize, l: usize) -> Result<()> {
        let lay = self.layout.blocks[b][l];
        let k = self.cfg.growth;
        let bott = self.cfg.bottleneck();
        let layer = self.global_layer(b, l);
        let s = &self.storages[b];
        let p = s.pixels();
        let shape = s.spatial();
        let zm = Mat::dense(0, p, bott);

        let bn1 = bn_ref(self.pass, &lay.norm1, s.stats_from(0), &self.params, &self.running);
        let w1 = At { buf: &self.params, offset: lay.conv1 };
        self.backend.bn_relu_conv1x1_fwd(
            View::new(&s.data, s.columns(0, lay.c_in)).bn_relu(bn1),
            w1,
            ViewMut::new(&mut self.z, zm),
        )?;

        if self.pass == Mode::Train
            && let Some(t) = self.train.as_mut()
        {
            let (mean, var) = zstats_offsets(layer, bott);
            self.backend.channel_stats(View::new(&self.z, zm), StatsMut::new(&mut t.zstats, mean, var))?;
        }
        let zstats = match &self.train {
            Some(t) => zstats_ref(&t.zstats, layer, bott),
            None => StatsRef { stats: &self.running, mean: 0, var: 0 },
        };
        let bn2 = bn_ref(self.pass, &lay.norm2, zstats, &self.params, &self.running);
        let w2 = At { buf: &self.params, offset: lay.conv2 };
        let s = &mut self.storages[b];
        let ym = s.columns(lay.c_in, k);
        self.backend.bn_relu_conv3x3_fwd(
            View::new(&self.z, zm).bn_relu(bn2),
            shape,
            w2,
            ViewMut::new(&mut s.data, ym),
        )?;

        self.storage_stats(b, lay.c_in, k)?;
        self.update_running(lay.norm1, StatsSource::Storage(b, 0), p)?;
        self.update_running(lay.norm2, StatsSource::Bottleneck(layer), p)
    }

    fn transition_forward(&mut self, b: usize) -> Result<()> {
        let tr = self.layout.transitions[b];
        let (src, dst) = self.storages.split_at_mut(b + 1);
        let (src, dst) = (&src[b], &mut dst[0]);
        let bn = bn_ref(self.pass, &tr.norm, src.stats_from(0), &self.params, &self.running);
        let w = At { buf: &self.params, offset: tr.conv };
        let ym = dst.columns(0, tr.c_out);
        self.backend.bn_relu_avgpool_conv1x1_fwd(
            View::new(&src.data, src.all()).bn_relu(bn),
            src.spatial(),
            w,
            ViewMut::new(&mut dst.data, ym),
        )?;
        let p = src.pixels();
        self.storage_stats(b + 1, 0, tr.c_out)?;
        self.update_running(tr.norm, StatsSource::Storage(b, 0), p)
    }

    fn head_forward(&mut self) -> Result<()> {
        let h = self.layout.head;
        let last = self.storages.len() - 1;
        let s = &self.storages[last];
        let bn = bn_ref(self.pass, &h.norm, s.stats_from(0), &self.params, &self.running);
        self.backend.bn_relu_global_pool_fwd(
            View::new(&s.data, s.all()).bn_relu(bn),
            s.spatial(),
            &mut self.pooled,
        )?;
        let w = At { buf: &self.params, offset: h.fc_weight };
        let bias = At { buf: &self.params, offset: h.fc_bias };
        self.backend.linear_fwd(
            View::new(&self.pooled, Mat::dense(0, self.batch, h.channels)),
            w,
            bias,
            ViewMut::new(&mut self.logits, Mat::dense(0, self.batch, h.classes)),
        )?;
        let p = s.pixels();
        self.update_running(h.norm, StatsSource::Storage(last, 0), p)?;
        if self.pass == Mode::Train
            && let Some(t) = self.train.as_mut()
        {
            self.backend.softmax_xent(
                View::new(&self.logits, Mat::dense(0, self.batch, h.classes)),
                &t.labels,
                &mut t.loss,
                ViewMut::new(&mut t.dlogits, Mat::dense(0, self.batch, h.classes)),
            )?;
        }
        Ok(())
    }

    fn global_layer(&self, b: usize, l: usize) -> usize {
        self.cfg.blocks[..b].iter().sum::<usize>() + l
    }

    // ---------------------------------------------------------------------------------------
    // backward
    // ---------------------------------------------------------------------------------------

    /// Backward pass of the last training forward: parameter gradients (overwritten, not
    /// accumulated across calls) and, if requested, the input gradient.
    pub fn backward(&mut self) -> Result<()> {
        if !self.pending_backward {
            return Err(Error::Config("backward needs a training forward first".into()));
        }
        let Some(mut t) = self.train.take() else {
            return Err(Error::Config("backward needs a network built in training mode".into()));
        };
        self.pending_backward = false;
        // Put the state back even when a backend op fails, so the network stays usable.
        let result = self.backward_with(&mut t);
        self.train = Some(t);
        result
    }

    fn backward_with(&mut self, t: &mut TrainState<B>) -> Result<()> {
        self.backend.fill_zero(&mut t.grads, 0, self.layout.num_params)?;
        let nblocks = self.storages.len();
        let cmax = t.corr_half;
        self.head_backward(t)?;
        for b in (0..nblocks).rev() {
            for l in (0..self.storages[b].geom.layers).rev() {
                self.layer_backward(t, b, l)?;
            }
            // The block input's gradient is complete: apply its deferred correction.
            let be = &self.backend;
            let s = &self.storages[b];
            let c0 = s.geom.c0;
            let g = &mut t.g[b % 2];
            be.bn_correction(
                ViewMut::new(g, s.columns(0, c0)),
                View::new(&s.data, s.columns(0, c0)),
                s.stats_from(0),
                &t.corr,
                0,
                cmax,
            )?;
            if b > 0 {
                self.transition_backward(t, b - 1)?;
            }
        }
        self.stem_backward(t)
    }

    fn head_backward(&self, t: &mut TrainState<B>) -> Result<()> {
        let be = &self.backend;
        let h = self.layout.head;
        let last = self.storages.len() - 1;
        let s = &self.storages[last];
        let w = At { buf: &self.params, offset: h.fc_weight };
        be.linear_bwd(
            View::new(&t.dlogits, Mat::dense(0, self.batch, h.classes)),
            View::new(&self.pooled, Mat::dense(0, self.batch, h.channels)),
            w,
            LinearGrads::new(&mut t.grads, h.fc_weight, h.fc_bias),
            ViewMut::new(&mut t.dpooled, Mat::dense(0, self.batch, h.channels)),
        )?;
        let bn = self.bn(&h.norm, s.stats_from(0));
        let g = &mut t.g[last % 2];
        be.bn_relu_global_pool_bwd(
            &t.dpooled,
            View::new(&s.data, s.all()).bn_relu(bn),
            s.spatial(),
            ViewMut::new(g, s.all()),
            &mut t.sums,
        )?;
        let cmax = t.corr_half;
        be.fill_zero(&mut t.corr, 0, 2 * cmax)?;
        be.bn_grad_fold(
            BnSums::new(&t.sums, h.channels, s.pixels()),
            bn,
            &mut t.grads,
            &mut t.corr,
            fold_target(&h.norm, Some(cmax)),
        )
    }

    fn layer_backward(&mut self, t: &mut TrainState<B>, b: usize, l: usize) -> Result<()> {
        let lay = self.layout.blocks[b][l];
        let k = self.cfg.growth;
        let bott = self.cfg.bottleneck();
        let layer = self.global_layer(b, l);
        // Disjoint borrows: the recomputed Z is written while parameters and S are read.
        let Network { backend: be, storages, params, running, z, pass: mode, .. } = self;
        let s = &storages[b];
        let (p, shape, c_l) = (s.pixels(), s.spatial(), lay.c_in);
        let cmax = t.corr_half;
        let zm = Mat::dense(0, p, bott);
        let dy = s.columns(c_l, k);

        // 1. Every later reader of channels [c_l, c_l + k) has contributed: finish dL/dY.
        let g = &mut t.g[b % 2];
        be.bn_correction(
            ViewMut::new(g, dy),
            View::new(&s.data, dy),
            s.stats_from(c_l),
            &t.corr,
            c_l,
            cmax + c_l,
        )?;

        // 2. Recompute Z — the only recomputation.
        let bn1 = bn_ref(*mode, &lay.norm1, s.stats_from(0), params, running);
        let w1 = At { buf: &*params, offset: lay.conv1 };
        be.bn_relu_conv1x1_fwd(View::new(&s.data, s.columns(0, c_l)).bn_relu(bn1), w1, ViewMut::new(z, zm))?;
        let z = &*z;

        // 3. 3×3 conv backward with BN2-ReLU fused into the loads of Z.
        let bn2 = bn_ref(*mode, &lay.norm2, zstats_ref(&t.zstats, layer, bott), params, running);
        let w2 = At { buf: &*params, offset: lay.conv2 };
        let g = &t.g[b % 2];
        be.bn_relu_conv3x3_wgrad(
            View::new(z, zm).bn_relu(bn2),
            shape,
            View::new(g, dy),
            AtMut::new(&mut t.grads, lay.conv2),
        )?;
        be.bn_relu_conv3x3_dgrad(
            View::new(g, dy),
            shape,
            w2,
            View::new(z, zm).bn_relu(bn2),
            ViewMut::new(&mut t.dz, zm),
            &mut t.sums,
        )?;

        // 4. Bottleneck BN backward, applied right away (Z has a single reader).
        be.bn_grad_fold(
            BnSums::new(&t.sums, bott, p),
            bn2,
            &mut t.grads,
            &mut t.corr,
            fold_target(&lay.norm2, None),
        )?;
        be.bn_backward_elementwise(ViewMut::new(&mut t.dz, zm), View::new(z, zm), bn2, &t.sums)?;

        // 5–6. 1×1 conv backward; its dgrad adds a·g straight into G[:, 0:c_l].
        be.bn_relu_conv1x1_wgrad(
            View::new(&s.data, s.columns(0, c_l)).bn_relu(bn1),
            View::new(&t.dz, zm),
            AtMut::new(&mut t.grads, lay.conv1),
        )?;
        let g = &mut t.g[b % 2];
        be.bn_relu_conv1x1_dgrad(
            View::new(&t.dz, zm),
            w1,
            View::new(&s.data, s.columns(0, c_l)).bn_relu(bn1),
            ViewMut::new(g, s.columns(0, c_l)),
            true,
            &mut t.sums,
        )?;

        // 7. Defer the rest of BN1's backward to the per-channel accumulators.
        be.bn_grad_fold(
            BnSums::new(&t.sums, c_l, p),
            bn1,
            &mut t.grads,
            &mut t.corr,
            fold_target(&lay.norm1, Some(cmax)),
        )
    }

    fn transition_backward(&self, t: &mut TrainState<B>, b: usize) -> Result<()> {
        let be = &self.backend;
        let tr = self.layout.transitions[b];
        let (src, dst) = (&self.storages[b], &self.storages[b + 1]);
        let bn = self.bn(&tr.norm, src.stats_from(0));
        let dym = dst.columns(0, tr.c_out);
        let cmax = t.corr_half;
        let (g_lo, g_hi) = t.g.split_at_mut(1);
        let (g_src, g_dst) =
            if b.is_multiple_of(2) { (&mut g_lo[0], &g_hi[0]) } else { (&mut g_hi[0], &g_lo[0]) };
        be.bn_relu_avgpool_conv1x1_wgrad(
            View::new(&src.data, src.all()).bn_relu(bn),
            src.spatial(),
            View::new(g_dst, dym),
            AtMut::new(&mut t.grads, tr.conv),
        )?;
        let w = At { buf: &self.params, offset: tr.conv };
        be.bn_relu_avgpool_conv1x1_dgrad(
            View::new(g_dst, dym),
            w,
            View::new(&src.data, src.all()).bn_relu(bn),
            src.spatial(),
            ViewMut::new(g_src, src.all()),
            &mut t.sums,
        )?;
        be.fill_zero(&mut t.corr, 0, 2 * cmax)?;
        be.bn_grad_fold(
            BnSums::new(&t.sums, tr.c_in, src.pixels()),
            bn,
            &mut t.grads,
            &mut t.corr,
            fold_target(&tr.norm, Some(cmax)),
        )
    }

    fn stem_backward(&self, t: &mut TrainState<B>) -> Result<()> {
        let be = &self.backend;
        let c0 = self.cfg.init_features;
        let geom = self.stem_geom();
        let in_shape = self.input_spatial();
        let xm = Mat::dense(0, in_shape.pixels(), self.cfg.in_channels);
        let s = &self.storages[0];
        let ds = s.columns(0, c0);
        let stem = self.layout.stem;
        let w = At { buf: &self.params, offset: stem.conv };
        let (g0, g1) = t.g.split_at_mut(1);
        let (g0, g1) = (&g0[0], &mut g1[0]);
        // dL/d(stem conv output): S's gradient directly (CIFAR), or through BN-ReLU-maxpool
        // into the free ping-pong buffer (ImageNet).
        let (dt, dtm): (&B::Buf, Mat) = match stem.norm {
            None => (g0, ds),
            Some(norm) => {
                let t_shape = geom.out(in_shape);
                let tm = Mat::dense(0, t_shape.pixels(), c0);
                let stats = StatsRef { stats: &t.stem_stats, mean: 0, var: c0 };
                let bn = self.bn(&norm, stats);
                be.bn_relu_maxpool_bwd(
                    View::new(g0, ds),
                    View::new(&self.stem_out, tm).bn_relu(bn),
                    t_shape,
                    ViewMut::new(g1, tm),
                    &mut t.sums,
                )?;
                be.bn_grad_fold(
                    BnSums::new(&t.sums, c0, t_shape.pixels()),
                    bn,
                    &mut t.grads,
                    &mut t.corr,
                    fold_target(&norm, None),
                )?;
                be.bn_backward_elementwise(ViewMut::new(g1, tm), View::new(&self.stem_out, tm), bn, &t.sums)?;
                (&*g1, tm)
            }
        };
        be.conv_wgrad(
            View::new(&self.input, xm),
            in_shape,
            geom,
            View::new(dt, dtm),
            AtMut::new(&mut t.grads, stem.conv),
        )?;
        if let Some(ig) = t.input_grad.as_mut() {
            be.conv_dgrad(View::new(dt, dtm), in_shape, geom, w, ViewMut::new(ig, xm))?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum StatsSource {
    /// Batch statistics of a block's storage from a channel on.
    Storage(usize, usize),
    /// Statistics of a layer's bottleneck output.
    Bottleneck(usize),
    /// Statistics of the ImageNet stem's conv output.
    Stem,
}

fn zstats_offsets(layer: usize, bott: usize) -> (usize, usize) {
    (2 * bott * layer, 2 * bott * layer + bott)
}

fn zstats_ref<B>(buf: &B, layer: usize, bott: usize) -> StatsRef<'_, B> {
    let (mean, var) = zstats_offsets(layer, bott);
    StatsRef { stats: buf, mean, var }
}

/// A BN reference built from disjoint borrows (so a caller can hold `&mut` to another field).
fn bn_ref<'a, B>(
    mode: Mode,
    norm: &BnLayout,
    stats: StatsRef<'a, B>,
    params: &'a B,
    running: &'a B,
) -> BnRef<'a, B> {
    let (stats, mean, var) = match mode {
        Mode::Train => (stats.stats, stats.mean, stats.var),
        Mode::Eval => (running, norm.running_mean, norm.running_var),
    };
    BnRef { stats, mean, var, params, gamma: norm.gamma, beta: norm.beta }
}

fn fold_target(norm: &BnLayout, corr_half: Option<usize>) -> BnGradTarget {
    BnGradTarget { dgamma: norm.gamma, dbeta: norm.beta, correction: corr_half.map(|half| (0, half)) }
}

fn no_optimizer() -> Error {
    Error::Config("the network was built without optimiser state (Options::with_optimizer)".into())
}

fn expect_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Shape(format!("{what}: got {got} values, expected {want}")));
    }
    Ok(())
}
