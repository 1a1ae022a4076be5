//! [`BaselineNetwork`]: the textbook training step over a [`Backend`].

use super::tape::{BnRelu, Feature, LayerTape, Tape, TransitionTape};
use crate::backend::UnfusedOps;
use crate::backend::{
    At, Backend, BnGradTarget, BnRef, Category, ConvGeom, Mat, PoolWindow, SgdParams, Spatial, StatsRef,
};
use crate::backend::{AtMut, BnSums, LinearGrads, StatsMut, View, ViewMut};
use crate::config::{DenseNetConfig, Geometry};
use crate::error::{Error, Result};
use crate::params::{BnLayout, ParamLayout};
use crate::plan::{BaselinePlan, Dtype};

const BASELINE: Category = Category::Baseline;
const CONV1X1: ConvGeom = ConvGeom { kernel: 1, stride: 1, pad: 0 };
const CONV3X3: ConvGeom = ConvGeom { kernel: 3, stride: 1, pad: 1 };
/// The ImageNet stem's convolution (the CIFAR stem's is [`CONV3X3`]).
const IMAGENET_STEM: ConvGeom = ConvGeom { kernel: 7, stride: 2, pad: 3 };
const POOL2: PoolWindow = PoolWindow { h: 2, w: 2 };

/// A dense block's features (input, then each layer's new channels) and its layers' tapes.
type BlockOutput<B> = (Vec<Feature<B>>, Vec<LayerTape<B>>);

/// A DenseNet-BC for one batch size and image size, trained the textbook way (see
/// [`crate::baseline`]). Parameters use the layout of [`ParamLayout`], inputs are NHWC, as for
/// [`crate::efficient::Network`], so the two can be fed the same data and compared.
pub struct BaselineNetwork<B: Backend + UnfusedOps> {
    backend: B,
    cfg: DenseNetConfig,
    layout: ParamLayout,
    geometry: Geometry,
    batch: usize,
    plan: BaselinePlan,
    params: B::Buf,
    running: B::Buf,
    grads: B::Buf,
    /// SGD momentum (when built with an optimiser).
    velocity: Option<B::Buf>,
    input: B::Buf,
    labels: B::Buf,
    logits: B::Buf,
    loss: B::Buf,
    dlogits: B::Buf,
    /// Per-channel reductions `[Σg | Σg·x̂]` of the BN being back-propagated.
    sums: B::Buf,
    /// `bn_grad_fold` takes a correction buffer even when told to use none (every baseline BN
    /// backward is applied at once): this empty buffer stands in for it.
    no_correction: B::Buf,
    /// What the last training forward stored, until backward consumes it.
    tape: Option<Tape<B>>,
}

impl<B: Backend + UnfusedOps> BaselineNetwork<B> {
    /// Allocates the parameters, their gradients (and SGD momentum with `optimizer`), the
    /// running statistics and the input/head buffers. Activations are allocated by
    /// [`BaselineNetwork::forward`] and freed by [`BaselineNetwork::backward`].
    pub fn new(
        backend: B,
        cfg: &DenseNetConfig,
        batch: usize,
        height: usize,
        width: usize,
        optimizer: bool,
    ) -> Result<Self> {
        // The plan validates the configuration and checks that every size is addressable.
        let plan = BaselinePlan::new(cfg, batch, height, width, Dtype::F32, optimizer)?;
        backend.ensure_fits("the baseline", plan.peak_bytes)?;
        let layout = ParamLayout::new(cfg);
        let alloc = |len, category| backend.alloc(len, category);
        let (params_cat, io_cat) = (Category::Parameters, Category::StemHead);
        let params = alloc(layout.num_params, params_cat)?;
        let running = alloc(layout.num_running, params_cat)?;
        let grads = alloc(layout.num_params, params_cat)?;
        let velocity = if optimizer { Some(alloc(layout.num_params, params_cat)?) } else { None };
        let input = alloc(plan.input_len, io_cat)?;
        let labels = alloc(batch, io_cat)?;
        let logits = alloc(batch * cfg.classes, io_cat)?;
        let loss = alloc(1, io_cat)?;
        let dlogits = alloc(batch * cfg.classes, io_cat)?;
        let sums = alloc(plan.sums_len, BASELINE)?;
        let no_correction = alloc(0, BASELINE)?;
        let mut net = BaselineNetwork {
            cfg: cfg.clone(),
            geometry: plan.geometry.clone(),
            batch,
            plan,
            params,
            running,
            grads,
            velocity,
            input,
            labels,
            logits,
            loss,
            dlogits,
            sums,
            no_correction,
            tape: None,
            layout,
            backend,
        };
        let running = net.layout.init_running();
        net.backend.upload(&mut net.running, 0, &running)?;
        Ok(net)
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The predicted memory of a training step of this network.
    pub fn plan(&self) -> &BaselinePlan {
        &self.plan
    }

    /// Loads parameters (layout of [`ParamLayout`]) and running statistics.
    pub fn set_params(&mut self, params: &[f32], running: &[f32]) -> Result<()> {
        expect_len("parameters", params.len(), self.layout.num_params)?;
        expect_len("running statistics", running.len(), self.layout.num_running)?;
        self.backend.upload(&mut self.params, 0, params)?;
        self.backend.upload(&mut self.running, 0, running)
    }

    /// Loads a batch: `images` NHWC (`batch × H × W × in_channels`), `labels` class indices.
    pub fn set_batch(&mut self, images: &[f32], labels: &[u32]) -> Result<()> {
        expect_len("images", images.len(), self.plan.input_len)?;
        expect_len("labels", labels.len(), self.batch)?;
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= self.cfg.classes) {
            return Err(Error::Shape(format!("label {bad} out of range for {} classes", self.cfg.classes)));
        }
        self.backend.upload(&mut self.input, 0, images)?;
        let as_f32: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
        self.backend.upload(&mut self.labels, 0, &as_f32)
    }

    pub fn params(&self) -> Result<Vec<f32>> {
        self.backend.download(&self.params, 0, self.layout.num_params)
    }

    pub fn running(&self) -> Result<Vec<f32>> {
        self.backend.download(&self.running, 0, self.layout.num_running)
    }

    /// Parameter gradients of the last [`BaselineNetwork::backward`].
    pub fn grads(&self) -> Result<Vec<f32>> {
        self.backend.download(&self.grads, 0, self.layout.num_params)
    }

    pub fn logits(&self) -> Result<Vec<f32>> {
        self.backend.download(&self.logits, 0, self.batch * self.cfg.classes)
    }

    /// Mean cross-entropy of the last forward.
    pub fn loss(&self) -> Result<f32> {
        Ok(self.backend.download(&self.loss, 0, 1)?[0])
    }

    /// One SGD step with the gradients of the last backward (needs the optimiser state).
    pub fn sgd_step(&mut self, hp: SgdParams) -> Result<()> {
        let v = self
            .velocity
            .as_mut()
            .ok_or_else(|| Error::Config("the baseline network was built without optimiser state".into()))?;
        self.backend.sgd_update(&mut self.params, &self.grads, v, self.layout.num_params, hp)
    }

    // ---------------------------------------------------------------------------------------
    // forward
    // ---------------------------------------------------------------------------------------

    /// Training forward (batch statistics; running statistics updated; loss and its gradient
    /// computed), storing what backward needs.
    pub fn forward(&mut self) -> Result<()> {
        // A tape whose backward was skipped is freed before the next one is built.
        self.tape = None;
        let (stem, mut block_input) = self.stem_forward()?;
        let last = self.geometry.blocks.len() - 1;
        let (mut features, mut layers, mut transitions) = (Vec::new(), Vec::new(), Vec::new());
        for b in 0..last {
            let (feats, tapes) = self.block_forward(b, block_input)?;
            let (transition, next) = self.transition_forward(b, &feats)?;
            block_input = next;
            features.push(feats);
            layers.push(tapes);
            transitions.push(transition);
        }
        let (feats, tapes) = self.block_forward(last, block_input)?;
        let (head, pooled) = self.head_forward(&feats)?;
        features.push(feats);
        layers.push(tapes);
        self.tape = Some(Tape { stem, features, layers, transitions, head, pooled });
        Ok(())
    }

    fn block_shape(&self, b: usize) -> (Spatial, usize) {
        let g = &self.geometry.blocks[b];
        let shape = Spatial { n: self.batch, h: g.height, w: g.width };
        (shape, shape.pixels())
    }

    fn stem_forward(&mut self) -> Result<(Option<BnRelu<B>>, Feature<B>)> {
        let c0 = self.cfg.init_features;
        let in_shape = Spatial { n: self.batch, h: self.geometry.height, w: self.geometry.width };
        let xm = Mat::dense(0, in_shape.pixels(), self.cfg.in_channels);
        let (_, rows) = self.block_shape(0);
        let stem = self.layout.stem;
        let w = At { buf: &self.params, offset: stem.conv };
        match stem.norm {
            None => {
                let mut f0 = self.backend.alloc(rows * c0, BASELINE)?;
                self.backend.conv_fwd(
                    View::new(&self.input, xm),
                    in_shape,
                    CONV3X3,
                    w,
                    ViewMut::new(&mut f0, Mat::dense(0, rows, c0)),
                )?;
                Ok((None, Feature { buf: f0, cols: c0 }))
            }
            Some(norm) => {
                let geom = IMAGENET_STEM;
                let t_shape = geom.out(in_shape);
                let tm = Mat::dense(0, t_shape.pixels(), c0);
                let mut t = self.backend.alloc(t_shape.pixels() * c0, BASELINE)?;
                self.backend.conv_fwd(
                    View::new(&self.input, xm),
                    in_shape,
                    geom,
                    w,
                    ViewMut::new(&mut t, tm),
                )?;
                let stage = self.bn_relu_forward(t, t_shape.pixels(), c0, &norm)?;
                let mut f0 = self.backend.alloc(rows * c0, BASELINE)?;
                self.backend.max_pool_fwd(
                    View::new(&stage.relu, tm),
                    t_shape,
                    ViewMut::new(&mut f0, Mat::dense(0, rows, c0)),
                )?;
                Ok((Some(stage), Feature { buf: f0, cols: c0 }))
            }
        }
    }

    /// The layers of block b from its input; returns the block's features and layer tapes.
    fn block_forward(&mut self, b: usize, input: Feature<B>) -> Result<BlockOutput<B>> {
        let mut feats = vec![input];
        let mut tapes = Vec::new();
        for l in 0..self.cfg.blocks[b] {
            let (tape, y) = self.layer_forward(b, l, &feats)?;
            tapes.push(tape);
            feats.push(y);
        }
        Ok((feats, tapes))
    }

    fn layer_forward(
        &mut self,
        b: usize,
        l: usize,
        feats: &[Feature<B>],
    ) -> Result<(LayerTape<B>, Feature<B>)> {
        let lay = self.layout.blocks[b][l];
        let (shape, rows) = self.block_shape(b);
        let (k, bott, c) = (self.cfg.growth, self.cfg.bottleneck(), lay.c_in);
        let cat = self.concat(feats, rows)?;
        let concat = self.bn_relu_forward(cat, rows, c, &lay.norm1)?;
        let mut z = self.backend.alloc(rows * bott, BASELINE)?;
        let w1 = At { buf: &self.params, offset: lay.conv1 };
        let (cm, zm) = (Mat::dense(0, rows, c), Mat::dense(0, rows, bott));
        self.backend.conv_fwd(View::new(&concat.relu, cm), shape, CONV1X1, w1, ViewMut::new(&mut z, zm))?;
        let bottleneck = self.bn_relu_forward(z, rows, bott, &lay.norm2)?;
        let mut y = self.backend.alloc(rows * k, BASELINE)?;
        let w2 = At { buf: &self.params, offset: lay.conv2 };
        self.backend.conv_fwd(
            View::new(&bottleneck.relu, zm),
            shape,
            CONV3X3,
            w2,
            ViewMut::new(&mut y, Mat::dense(0, rows, k)),
        )?;
        Ok((LayerTape { concat, bottleneck }, Feature { buf: y, cols: k }))
    }

    /// BN → ReLU → conv1×1 → avg-pool 2×2 after block b; returns the tape and block b+1's
    /// input.
    fn transition_forward(
        &mut self,
        b: usize,
        feats: &[Feature<B>],
    ) -> Result<(TransitionTape<B>, Feature<B>)> {
        let tr = self.layout.transitions[b];
        let (shape, rows) = self.block_shape(b);
        let cat = self.concat(feats, rows)?;
        let stage = self.bn_relu_forward(cat, rows, tr.c_in, &tr.norm)?;
        let mut conv = self.backend.alloc(rows * tr.c_out, BASELINE)?;
        let w = At { buf: &self.params, offset: tr.conv };
        let convm = Mat::dense(0, rows, tr.c_out);
        self.backend.conv_fwd(
            View::new(&stage.relu, Mat::dense(0, rows, tr.c_in)),
            shape,
            CONV1X1,
            w,
            ViewMut::new(&mut conv, convm),
        )?;
        let out = POOL2.out(shape).pixels();
        let mut pooled = self.backend.alloc(out * tr.c_out, BASELINE)?;
        self.backend.avg_pool_fwd(
            View::new(&conv, convm),
            shape,
            POOL2,
            ViewMut::new(&mut pooled, Mat::dense(0, out, tr.c_out)),
        )?;
        Ok((TransitionTape { stage, conv }, Feature { buf: pooled, cols: tr.c_out }))
    }

    /// norm5 → ReLU → global average pool → linear → softmax cross-entropy.
    fn head_forward(&mut self, feats: &[Feature<B>]) -> Result<(BnRelu<B>, B::Buf)> {
        let h = self.layout.head;
        let (shape, rows) = self.block_shape(self.geometry.blocks.len() - 1);
        let cat = self.concat(feats, rows)?;
        let stage = self.bn_relu_forward(cat, rows, h.channels, &h.norm)?;
        let mut pooled = self.backend.alloc(self.batch * h.channels, BASELINE)?;
        let window = PoolWindow { h: shape.h, w: shape.w };
        let (rm, pm) = (Mat::dense(0, rows, h.channels), Mat::dense(0, self.batch, h.channels));
        self.backend.avg_pool_fwd(
            View::new(&stage.relu, rm),
            shape,
            window,
            ViewMut::new(&mut pooled, pm),
        )?;
        let w = At { buf: &self.params, offset: h.fc_weight };
        let bias = At { buf: &self.params, offset: h.fc_bias };
        let be = &self.backend;
        be.linear_fwd(
            View::new(&pooled, Mat::dense(0, self.batch, h.channels)),
            w,
            bias,
            ViewMut::new(&mut self.logits, Mat::dense(0, self.batch, h.classes)),
        )?;
        be.softmax_xent(
            View::new(&self.logits, Mat::dense(0, self.batch, h.classes)),
            &self.labels,
            &mut self.loss,
            ViewMut::new(&mut self.dlogits, Mat::dense(0, self.batch, h.classes)),
        )?;
        Ok((stage, pooled))
    }

    /// A fresh `rows × Σcols` buffer holding `feats` side by side.
    fn concat(&self, feats: &[Feature<B>], rows: usize) -> Result<B::Buf> {
        let width = feats.iter().map(|f| f.cols).sum();
        let mut cat = self.backend.alloc(rows * width, BASELINE)?;
        let cm = Mat::dense(0, rows, width);
        let mut start = 0;
        for f in feats {
            let src = Mat::dense(0, rows, f.cols);
            self.backend.copy_columns(
                View::new(&f.buf, src),
                ViewMut::new(&mut cat, cm.columns(start, f.cols)),
                false,
            )?;
            start += f.cols;
        }
        Ok(cat)
    }

    /// Batch statistics of x, the BN output and the ReLU output, all kept; the running
    /// statistics are updated as PyTorch does.
    fn bn_relu_forward(
        &mut self,
        x: B::Buf,
        rows: usize,
        channels: usize,
        norm: &BnLayout,
    ) -> Result<BnRelu<B>> {
        let be = &self.backend;
        let m = Mat::dense(0, rows, channels);
        let mut stats = be.alloc(2 * channels, BASELINE)?;
        be.channel_stats(View::new(&x, m), StatsMut::new(&mut stats, 0, channels))?;
        let bn = BnRef {
            stats: &stats,
            mean: 0,
            var: channels,
            params: &self.params,
            gamma: norm.gamma,
            beta: norm.beta,
        };
        let mut bn_out = be.alloc(rows * channels, BASELINE)?;
        be.bn_apply(View::new(&x, m), bn, ViewMut::new(&mut bn_out, m))?;
        let mut relu = be.alloc(rows * channels, BASELINE)?;
        be.relu_fwd(View::new(&bn_out, m), ViewMut::new(&mut relu, m))?;
        let batch_stats = StatsRef { stats: &stats, mean: 0, var: channels };
        be.update_running_stats(
            batch_stats,
            channels,
            rows,
            StatsMut::new(&mut self.running, norm.running_mean, norm.running_var),
        )?;
        Ok(BnRelu { x, stats, bn: bn_out, relu, rows, channels })
    }

    // ---------------------------------------------------------------------------------------
    // backward
    // ---------------------------------------------------------------------------------------

    /// Backward of the last forward: parameter gradients (overwritten). Frees the tape as it
    /// goes; a second call needs a new forward.
    pub fn backward(&mut self) -> Result<()> {
        let tape = self.tape.take().ok_or_else(|| Error::Config("backward needs a forward first".into()))?;
        self.backend.fill_zero(&mut self.grads, 0, self.layout.num_params)?;
        let Tape { mut stem, features, layers, mut transitions, head, pooled } = tape;
        let last_widths: Vec<usize> =
            features.last().map_or(Vec::new(), |f| f.iter().map(|f| f.cols).collect());
        let mut dfeat = self.head_backward(head, pooled, &last_widths)?;
        for (b, (mut feats, tapes)) in features.into_iter().zip(layers).enumerate().rev() {
            for (l, tape) in tapes.into_iter().enumerate().rev() {
                // Layer l's output: every reader (later concatenations) has been passed.
                drop(feats.pop());
                let dy = dfeat.pop().ok_or_else(tape_mismatch)?;
                self.layer_backward(b, l, tape, dy, &mut dfeat)?;
            }
            drop(feats);
            let d0 = dfeat.pop().ok_or_else(tape_mismatch)?;
            if b > 0 {
                let tr = transitions.pop().ok_or_else(tape_mismatch)?;
                dfeat = self.transition_backward(b - 1, tr, d0)?;
            } else {
                self.stem_backward(stem.take(), d0)?;
            }
        }
        Ok(())
    }

    fn head_backward(
        &mut self,
        stage: BnRelu<B>,
        pooled: B::Buf,
        widths: &[usize],
    ) -> Result<Vec<Feature<B>>> {
        let h = self.layout.head;
        let (shape, rows) = self.block_shape(self.geometry.blocks.len() - 1);
        let be = &self.backend;
        let mut dpooled = be.alloc(self.batch * h.channels, BASELINE)?;
        let w = At { buf: &self.params, offset: h.fc_weight };
        be.linear_bwd(
            View::new(&self.dlogits, Mat::dense(0, self.batch, h.classes)),
            View::new(&pooled, Mat::dense(0, self.batch, h.channels)),
            w,
            LinearGrads::new(&mut self.grads, h.fc_weight, h.fc_bias),
            ViewMut::new(&mut dpooled, Mat::dense(0, self.batch, h.channels)),
        )?;
        drop(pooled);
        let mut d = be.alloc(rows * h.channels, BASELINE)?;
        let window = PoolWindow { h: shape.h, w: shape.w };
        let (pm, dm) = (Mat::dense(0, self.batch, h.channels), Mat::dense(0, rows, h.channels));
        be.avg_pool_bwd(View::new(&dpooled, pm), shape, window, ViewMut::new(&mut d, dm))?;
        drop(dpooled);
        self.bn_relu_backward(stage, &mut d, &h.norm)?;
        self.split_new(&d, rows, widths)
    }

    /// Backward of layer l of block b given dL/d(its output) `dy`; adds the gradient of its
    /// concatenation into the gradients of the features it read (`dfeat`).
    fn layer_backward(
        &mut self,
        b: usize,
        l: usize,
        tape: LayerTape<B>,
        dy: Feature<B>,
        dfeat: &mut [Feature<B>],
    ) -> Result<()> {
        let lay = self.layout.blocks[b][l];
        let (shape, rows) = self.block_shape(b);
        let (k, bott, c) = (self.cfg.growth, self.cfg.bottleneck(), lay.c_in);
        let (cm, zm, ym) = (Mat::dense(0, rows, c), Mat::dense(0, rows, bott), Mat::dense(0, rows, k));
        let LayerTape { concat, bottleneck } = tape;

        let mut dz = self.backend.alloc(rows * bott, BASELINE)?;
        let w2 = At { buf: &self.params, offset: lay.conv2 };
        self.backend.conv_wgrad(
            View::new(&bottleneck.relu, zm),
            shape,
            CONV3X3,
            View::new(&dy.buf, ym),
            AtMut::new(&mut self.grads, lay.conv2),
        )?;
        self.backend.conv_dgrad(View::new(&dy.buf, ym), shape, CONV3X3, w2, ViewMut::new(&mut dz, zm))?;
        drop(dy);
        self.bn_relu_backward(bottleneck, &mut dz, &lay.norm2)?;

        let mut dcat = self.backend.alloc(rows * c, BASELINE)?;
        let w1 = At { buf: &self.params, offset: lay.conv1 };
        self.backend.conv_wgrad(
            View::new(&concat.relu, cm),
            shape,
            CONV1X1,
            View::new(&dz, zm),
            AtMut::new(&mut self.grads, lay.conv1),
        )?;
        self.backend.conv_dgrad(View::new(&dz, zm), shape, CONV1X1, w1, ViewMut::new(&mut dcat, cm))?;
        drop(dz);
        self.bn_relu_backward(concat, &mut dcat, &lay.norm1)?;
        self.split_add(&dcat, rows, dfeat)
    }

    /// Backward of the transition after block b given dL/d(its pooled output); returns the
    /// gradients of block b's features.
    fn transition_backward(
        &mut self,
        b: usize,
        tape: TransitionTape<B>,
        dpooled: Feature<B>,
    ) -> Result<Vec<Feature<B>>> {
        let tr = self.layout.transitions[b];
        let (shape, rows) = self.block_shape(b);
        let TransitionTape { stage, conv } = tape;
        let (cm, convm) = (Mat::dense(0, rows, tr.c_in), Mat::dense(0, rows, tr.c_out));
        let out = POOL2.out(shape).pixels();
        let mut dconv = self.backend.alloc(rows * tr.c_out, BASELINE)?;
        self.backend.avg_pool_bwd(
            View::new(&dpooled.buf, Mat::dense(0, out, tr.c_out)),
            shape,
            POOL2,
            ViewMut::new(&mut dconv, convm),
        )?;
        drop(dpooled);
        drop(conv);
        let mut d = self.backend.alloc(rows * tr.c_in, BASELINE)?;
        let w = At { buf: &self.params, offset: tr.conv };
        self.backend.conv_wgrad(
            View::new(&stage.relu, cm),
            shape,
            CONV1X1,
            View::new(&dconv, convm),
            AtMut::new(&mut self.grads, tr.conv),
        )?;
        self.backend.conv_dgrad(View::new(&dconv, convm), shape, CONV1X1, w, ViewMut::new(&mut d, cm))?;
        drop(dconv);
        self.bn_relu_backward(stage, &mut d, &tr.norm)?;
        let widths: Vec<usize> = std::iter::once(self.geometry.blocks[b].c0)
            .chain(std::iter::repeat_n(self.cfg.growth, self.cfg.blocks[b]))
            .collect();
        self.split_new(&d, rows, &widths)
    }

    /// Stem backward given dL/d(block 1's input): the conv's weight gradient (through the
    /// max-pool, ReLU and BN for the ImageNet stem).
    fn stem_backward(&mut self, stage: Option<BnRelu<B>>, d0: Feature<B>) -> Result<()> {
        let c0 = self.cfg.init_features;
        let in_shape = Spatial { n: self.batch, h: self.geometry.height, w: self.geometry.width };
        let xm = Mat::dense(0, in_shape.pixels(), self.cfg.in_channels);
        let (_, rows) = self.block_shape(0);
        let conv = self.layout.stem.conv;
        match (stage, self.layout.stem.norm) {
            (Some(stage), Some(norm)) => {
                let geom = IMAGENET_STEM;
                let t_shape = geom.out(in_shape);
                let tm = Mat::dense(0, t_shape.pixels(), c0);
                let mut dt = self.backend.alloc(t_shape.pixels() * c0, BASELINE)?;
                self.backend.max_pool_bwd(
                    View::new(&d0.buf, Mat::dense(0, rows, c0)),
                    View::new(&stage.relu, tm),
                    t_shape,
                    ViewMut::new(&mut dt, tm),
                )?;
                drop(d0);
                self.bn_relu_backward(stage, &mut dt, &norm)?;
                self.backend.conv_wgrad(
                    View::new(&self.input, xm),
                    in_shape,
                    geom,
                    View::new(&dt, tm),
                    AtMut::new(&mut self.grads, conv),
                )
            }
            (None, None) => {
                let dm = Mat::dense(0, rows, c0);
                self.backend.conv_wgrad(
                    View::new(&self.input, xm),
                    in_shape,
                    CONV3X3,
                    View::new(&d0.buf, dm),
                    AtMut::new(&mut self.grads, conv),
                )
            }
            _ => Err(tape_mismatch()),
        }
    }

    /// Backward of a stored BN → ReLU pair, in place: `g` holds dL/d(ReLU output) and ends as
    /// dL/d(BN input); dγ, dβ are added to the gradients. Frees the stage.
    fn bn_relu_backward(&mut self, stage: BnRelu<B>, g: &mut B::Buf, norm: &BnLayout) -> Result<()> {
        let BnRelu { x, stats, bn, relu, rows, channels } = stage;
        let be = &self.backend;
        let m = Mat::dense(0, rows, channels);
        // The ReLU output's reader (the conv or pool after it) has been back-propagated.
        drop(relu);
        be.relu_bwd(ViewMut::new(g, m), View::new(&bn, m))?;
        drop(bn);
        be.bn_grad_sums(
            View::new(g, m),
            View::new(&x, m),
            StatsRef { stats: &stats, mean: 0, var: channels },
            &mut self.sums,
        )?;
        let bnref = BnRef {
            stats: &stats,
            mean: 0,
            var: channels,
            params: &self.params,
            gamma: norm.gamma,
            beta: norm.beta,
        };
        let target = BnGradTarget { dgamma: norm.gamma, dbeta: norm.beta, correction: None };
        be.bn_grad_fold(
            BnSums::new(&self.sums, channels, rows),
            bnref,
            &mut self.grads,
            &mut self.no_correction,
            target,
        )?;
        be.bn_backward_elementwise(ViewMut::new(g, m), View::new(&x, m), bnref, &self.sums)
    }

    /// Splits the gradient of a concatenation into new per-feature gradient buffers.
    fn split_new(&self, d: &B::Buf, rows: usize, widths: &[usize]) -> Result<Vec<Feature<B>>> {
        let mut out = widths
            .iter()
            .map(|&cols| Ok(Feature { buf: self.backend.alloc(rows * cols, BASELINE)?, cols }))
            .collect::<Result<Vec<_>>>()?;
        self.split(d, rows, &mut out, false)?;
        Ok(out)
    }

    /// Adds the gradient of a concatenation into the gradients of the features it was built
    /// from.
    fn split_add(&self, d: &B::Buf, rows: usize, dfeat: &mut [Feature<B>]) -> Result<()> {
        self.split(d, rows, dfeat, true)
    }

    fn split(&self, d: &B::Buf, rows: usize, dfeat: &mut [Feature<B>], accumulate: bool) -> Result<()> {
        let dm = Mat::dense(0, rows, dfeat.iter().map(|f| f.cols).sum());
        let mut start = 0;
        for f in dfeat {
            let dst = Mat::dense(0, rows, f.cols);
            self.backend.copy_columns(
                View::new(d, dm.columns(start, f.cols)),
                ViewMut::new(&mut f.buf, dst),
                accumulate,
            )?;
            start += f.cols;
        }
        Ok(())
    }
}

/// The tape does not have the network's structure: a bug, reported rather than a panic.
fn tape_mismatch() -> Error {
    Error::Shape("the baseline network's stored activations do not match its layers".into())
}

fn expect_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Shape(format!("{what}: got {got} values, expected {want}")));
    }
    Ok(())
}
