//! The textbook DenseNet-BC built from [`super::ops`]: explicit concatenation before every
//! dense layer and transition, every intermediate kept for the backward pass (a "tape"),
//! and the backward written out layer by layer in reverse.

use super::KinkResolver;
use super::ops::{self, BnCache, ConvShape, Tensor};
use crate::config::{DenseNetConfig, Geometry, Stem};
use crate::params::{BnLayout, BnSite, ParamLayout};
use std::cell::Cell;

/// Where batch-norm takes its statistics from.
pub(crate) enum Stats<'r> {
    /// Training mode: batch statistics; the running statistics in this buffer (a copy of the
    /// caller's) are updated in place, PyTorch-style.
    Batch(&'r mut [f64]),
    /// Eval mode: normalise with these running statistics, change nothing.
    Running(&'r [f64]),
}

/// One BN → ReLU as recorded by the forward pass.
struct BnReluTape {
    /// Present in training mode only (eval mode has no backward).
    bn: Option<BnCache>,
    /// ReLU output: the input of the following conv / pool.
    act: Tensor,
    /// Which ReLU inputs were passed (`> 0`, or as the kink resolver decided).
    pass: Vec<bool>,
}

impl BnReluTape {
    fn cache(&self) -> &BnCache {
        self.bn.as_ref().expect("backward only follows a training-mode forward")
    }
}

enum StemTape {
    Cifar,
    Imagenet {
        norm: Box<BnReluTape>,
        /// Max-pool argmax per output element.
        argmax: Vec<usize>,
    },
}

struct LayerTape {
    norm1: BnReluTape,
    norm2: BnReluTape,
}

struct TransitionTape {
    norm: BnReluTape,
}

struct HeadTape {
    norm: BnReluTape,
    /// Global-average-pooled features, `n × channels`: the classifier's input.
    pooled: Vec<f64>,
}

/// Everything the backward pass needs.
pub(crate) struct Tape {
    input_shape: (usize, usize, usize, usize),
    stem: StemTape,
    blocks: Vec<Vec<LayerTape>>,
    transitions: Vec<TransitionTape>,
    head: HeadTape,
}

/// Result of a forward pass.
pub(crate) struct ForwardOut {
    pub logits: Vec<f64>,
    pub tape: Tape,
}

/// The network: configuration, layout, geometry and the parameters it reads.
pub(crate) struct Net<'a> {
    pub cfg: &'a DenseNetConfig,
    pub layout: &'a ParamLayout,
    pub geometry: Geometry,
    pub params: &'a [f64],
    /// Decides ReLU masks and max-pool arg-maxes within its margin of a kink.
    pub resolver: Option<&'a dyn KinkResolver>,
    /// Number of decisions handed to the resolver.
    pub ambiguous: Cell<usize>,
}

const CONV1X1: ConvShape = ConvShape { kernel: 1, stride: 1, pad: 0 };
const CONV3X3: ConvShape = ConvShape { kernel: 3, stride: 1, pad: 1 };

fn add_into(dst: &mut [f64], src: &[f64]) {
    assert_eq!(dst.len(), src.len());
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

impl Net<'_> {
    fn slice(&self, offset: usize, len: usize) -> &[f64] {
        &self.params[offset..offset + len]
    }

    fn conv_weight(&self, offset: usize, c_out: usize, kernel: usize, c_in: usize) -> &[f64] {
        self.slice(offset, c_out * kernel * kernel * c_in)
    }

    fn gamma_beta(&self, bn: &BnLayout) -> (&[f64], &[f64]) {
        (self.slice(bn.gamma, bn.channels), self.slice(bn.beta, bn.channels))
    }

    fn stem_shape(&self) -> ConvShape {
        match self.cfg.stem {
            Stem::Cifar => ConvShape { kernel: 3, stride: 1, pad: 1 },
            Stem::Imagenet => ConvShape { kernel: 7, stride: 2, pad: 3 },
        }
    }

    /// The ReLU pass mask of `y`, the input of the ReLU after the BN at `site`.
    fn relu_mask(&self, y: &Tensor, site: BnSite) -> Vec<bool> {
        let Some(r) = self.resolver else { return ops::relu_mask(y) };
        let margin = r.margin();
        let mut ambiguous = 0;
        let mask = y
            .data
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if v.abs() >= margin {
                    v > 0.0
                } else {
                    ambiguous += 1;
                    r.relu_passes(site, y.position(i), v)
                }
            })
            .collect();
        self.ambiguous.set(self.ambiguous.get() + ambiguous);
        mask
    }

    /// Max-pool of the stem's BN-ReLU output, with near-ties inside the resolver's margin
    /// decided by the resolver.
    fn stem_maxpool(&self, act: &Tensor) -> (Tensor, Vec<usize>) {
        let (pooled, mut argmax) = ops::maxpool3s2p1_forward(act);
        let Some(r) = self.resolver else { return (pooled, argmax) };
        let margin = r.margin();
        for (j, best) in argmax.iter_mut().enumerate() {
            let [n, c, oy, ox] = pooled.position(j);
            let plane = act.plane(n, c);
            let max = pooled.data[j];
            let (rows, cols) = ops::maxpool3s2p1_window(act.h, act.w, oy, ox);
            let candidates: Vec<[usize; 4]> = rows
                .flat_map(|y| cols.clone().map(move |x| (y, x)))
                .filter(|&(y, x)| y * act.w + x == *best || max - plane[y * act.w + x] < margin)
                .map(|(y, x)| [n, c, y, x])
                .collect();
            if candidates.len() > 1 {
                self.ambiguous.set(self.ambiguous.get() + 1);
                let [_, _, y, x] = candidates[r.maxpool_pick(&candidates)];
                *best = y * act.w + x;
            }
        }
        (pooled, argmax)
    }

    /// BN (batch or running statistics) followed by ReLU.
    fn bn_relu(&self, x: &Tensor, bn: &BnLayout, stats: &mut Stats, site: BnSite) -> BnReluTape {
        assert_eq!(x.c, bn.channels, "batch-norm channels");
        let (gamma, beta) = self.gamma_beta(bn);
        let c = bn.channels;
        match stats {
            Stats::Batch(running) => {
                let (y, cache) = ops::batchnorm_train_forward(x, gamma, beta);
                let (mean, var) = running.split_at_mut(bn.running_var);
                ops::batchnorm_update_running(
                    &mut mean[bn.running_mean..bn.running_mean + c],
                    &mut var[..c],
                    &cache,
                );
                let pass = self.relu_mask(&y, site);
                BnReluTape { bn: Some(cache), act: ops::relu_forward(&y), pass }
            }
            Stats::Running(running) => {
                let mean = &running[bn.running_mean..bn.running_mean + c];
                let var = &running[bn.running_var..bn.running_var + c];
                let y = ops::batchnorm_eval_forward(x, gamma, beta, mean, var);
                BnReluTape { bn: None, act: ops::relu_forward(&y), pass: Vec::new() }
            }
        }
    }

    /// Backward of [`Net::bn_relu`]: writes dγ, dβ into `grads`, returns dL/dx.
    fn bn_relu_backward(&self, dact: &Tensor, t: &BnReluTape, bn: &BnLayout, grads: &mut [f64]) -> Tensor {
        let dy = ops::relu_backward(dact, &t.pass);
        let (gamma, _) = self.gamma_beta(bn);
        let (dx, dgamma, dbeta) = ops::batchnorm_backward(&dy, t.cache(), gamma);
        add_into(&mut grads[bn.gamma..bn.gamma + bn.channels], &dgamma);
        add_into(&mut grads[bn.beta..bn.beta + bn.channels], &dbeta);
        dx
    }

    /// Forward pass from NCHW images to logits, recording the tape.
    pub fn forward(&self, images: &Tensor, stats: &mut Stats) -> ForwardOut {
        let cfg = self.cfg;
        let lay = self.layout;
        let k = cfg.growth;
        let bott = cfg.bottleneck();

        // Stem.
        let sl = &lay.stem;
        let w0 = self.conv_weight(sl.conv, cfg.init_features, sl.kernel, cfg.in_channels);
        let conv0 = ops::conv2d_forward(images, w0, cfg.init_features, self.stem_shape());
        assert_eq!((conv0.h, conv0.w), self.geometry.stem_conv);
        let (mut x, stem) = match cfg.stem {
            Stem::Cifar => (conv0, StemTape::Cifar),
            Stem::Imagenet => {
                let norm0 = sl.norm.as_ref().expect("imagenet stem has norm0");
                let norm = self.bn_relu(&conv0, norm0, stats, BnSite::Norm0);
                let (pooled, argmax) = self.stem_maxpool(&norm.act);
                (pooled, StemTape::Imagenet { norm: Box::new(norm), argmax })
            }
        };

        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (b, block_layout) in lay.blocks.iter().enumerate() {
            let g = &self.geometry.blocks[b];
            assert_eq!((x.c, x.h, x.w), (g.c0, g.height, g.width), "block {b} input");
            // features[0] = block input, features[l + 1] = output of layer l.
            let mut features = vec![x];
            let mut tapes = Vec::new();
            for (l, ll) in block_layout.iter().enumerate() {
                let parts: Vec<&Tensor> = features.iter().collect();
                let input = ops::concat_channels(&parts);
                assert_eq!(input.c, ll.c_in);
                let norm1 = self.bn_relu(&input, &ll.norm1, stats, BnSite::Norm1 { block: b, layer: l });
                let w1 = self.conv_weight(ll.conv1, bott, 1, ll.c_in);
                let z = ops::conv2d_forward(&norm1.act, w1, bott, CONV1X1);
                let norm2 = self.bn_relu(&z, &ll.norm2, stats, BnSite::Norm2 { block: b, layer: l });
                let w2 = self.conv_weight(ll.conv2, k, 3, bott);
                let y = ops::conv2d_forward(&norm2.act, w2, k, CONV3X3);
                features.push(y);
                tapes.push(LayerTape { norm1, norm2 });
            }
            blocks.push(tapes);
            let parts: Vec<&Tensor> = features.iter().collect();
            let out = ops::concat_channels(&parts);
            assert_eq!(out.c, g.channels);
            x = if let Some(tl) = lay.transitions.get(b) {
                let norm = self.bn_relu(&out, &tl.norm, stats, BnSite::Transition { block: b });
                let w = self.conv_weight(tl.conv, tl.c_out, 1, tl.c_in);
                let conv = ops::conv2d_forward(&norm.act, w, tl.c_out, CONV1X1);
                transitions.push(TransitionTape { norm });
                ops::avgpool2_forward(&conv)
            } else {
                out
            };
        }

        // Head.
        let hl = &lay.head;
        let norm = self.bn_relu(&x, &hl.norm, stats, BnSite::Norm5);
        let pooled = ops::global_avg_pool_forward(&norm.act);
        let logits = ops::linear_forward(
            &pooled,
            x.n,
            hl.channels,
            self.slice(hl.fc_weight, hl.classes * hl.channels),
            self.slice(hl.fc_bias, hl.classes),
            hl.classes,
        );
        let input_shape = (images.n, images.c, images.h, images.w);
        ForwardOut {
            logits,
            tape: Tape { input_shape, stem, blocks, transitions, head: HeadTape { norm, pooled } },
        }
    }

    /// Backward pass from dL/dlogits, given the tape of a training-mode forward of `images`:
    /// returns (parameter gradients in the layout of the parameter buffer, dL/dimages).
    pub fn backward(&self, images: &Tensor, tape: &Tape, dlogits: &[f64]) -> (Vec<f64>, Tensor) {
        let cfg = self.cfg;
        let lay = self.layout;
        let k = cfg.growth;
        let bott = cfg.bottleneck();
        let mut grads = vec![0.0; lay.num_params];
        let n = tape.input_shape.0;

        // Head.
        let hl = &lay.head;
        let last = self.geometry.last();
        let (dpooled, dw, db) = ops::linear_backward(
            dlogits,
            &tape.head.pooled,
            n,
            hl.channels,
            self.slice(hl.fc_weight, hl.classes * hl.channels),
            hl.classes,
        );
        add_into(&mut grads[hl.fc_weight..hl.fc_weight + dw.len()], &dw);
        add_into(&mut grads[hl.fc_bias..hl.fc_bias + db.len()], &db);
        let dact = ops::global_avg_pool_backward(&dpooled, n, hl.channels, last.height, last.width);
        // dL/d(output of the last block).
        let mut dout = self.bn_relu_backward(&dact, &tape.head.norm, &hl.norm, &mut grads);

        for b in (0..lay.blocks.len()).rev() {
            let g = &self.geometry.blocks[b];
            if let Some(tl) = lay.transitions.get(b) {
                // dout is dL/d(transition output) = dL/d(input of block b + 1).
                let tt = &tape.transitions[b];
                let dconv = ops::avgpool2_backward(&dout, g.height, g.width);
                let w = self.conv_weight(tl.conv, tl.c_out, 1, tl.c_in);
                let dw = ops::conv2d_backward_weight(&tt.norm.act, &dconv, CONV1X1);
                add_into(&mut grads[tl.conv..tl.conv + dw.len()], &dw);
                let dact = ops::conv2d_backward_data(&dconv, w, tl.c_in, g.height, g.width, CONV1X1);
                dout = self.bn_relu_backward(&dact, &tt.norm, &tl.norm, &mut grads);
            }
            // dout is now dL/d(concat of all features of block b): split per feature.
            let mut sizes = vec![g.c0];
            sizes.extend(std::iter::repeat_n(k, g.layers));
            let mut dfeat = ops::split_channels(&dout, &sizes);
            for l in (0..g.layers).rev() {
                let ll = &lay.blocks[b][l];
                let lt = &tape.blocks[b][l];
                // Every later layer has already added its share: this is dL/dy_l.
                let dy = &dfeat[l + 1];
                let w2 = self.conv_weight(ll.conv2, k, 3, bott);
                let dw2 = ops::conv2d_backward_weight(&lt.norm2.act, dy, CONV3X3);
                add_into(&mut grads[ll.conv2..ll.conv2 + dw2.len()], &dw2);
                let dact2 = ops::conv2d_backward_data(dy, w2, bott, g.height, g.width, CONV3X3);
                let dz = self.bn_relu_backward(&dact2, &lt.norm2, &ll.norm2, &mut grads);
                let w1 = self.conv_weight(ll.conv1, bott, 1, ll.c_in);
                let dw1 = ops::conv2d_backward_weight(&lt.norm1.act, &dz, CONV1X1);
                add_into(&mut grads[ll.conv1..ll.conv1 + dw1.len()], &dw1);
                let dact1 = ops::conv2d_backward_data(&dz, w1, ll.c_in, g.height, g.width, CONV1X1);
                let dinput = self.bn_relu_backward(&dact1, &lt.norm1, &ll.norm1, &mut grads);
                // Backward of the explicit concatenation [features 0..=l].
                let parts = ops::split_channels(&dinput, &sizes[..=l]);
                for (acc, part) in dfeat.iter_mut().zip(&parts) {
                    acc.add_assign(part);
                }
            }
            dout = dfeat.swap_remove(0);
        }

        // Stem: dout is dL/d(input of block 1).
        let sl = &lay.stem;
        assert_eq!((images.n, images.c, images.h, images.w), tape.input_shape);
        let (_, c_in, h, w) = tape.input_shape;
        let dconv0 = match &tape.stem {
            StemTape::Cifar => dout,
            StemTape::Imagenet { norm, argmax } => {
                let (ch, cw) = self.geometry.stem_conv;
                let dact = ops::maxpool3s2p1_backward(&dout, argmax, ch, cw);
                let norm0 = sl.norm.as_ref().expect("imagenet stem has norm0");
                self.bn_relu_backward(&dact, norm, norm0, &mut grads)
            }
        };
        let w0 = self.conv_weight(sl.conv, cfg.init_features, sl.kernel, c_in);
        let dw0 = ops::conv2d_backward_weight(images, &dconv0, self.stem_shape());
        add_into(&mut grads[sl.conv..sl.conv + dw0.len()], &dw0);
        let dimages = ops::conv2d_backward_data(&dconv0, w0, c_in, h, w, self.stem_shape());
        (grads, dimages)
    }
}
