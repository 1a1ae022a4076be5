//! Every CUDA kernel family at the shapes of DenseNet-121 (k = 32, 224×224) and DenseNet-BC-100
//! (k = 12, 32×32), batch 64, with GFLOP/s and GB/s, and each fused op against an unfused chain
//! of our own kernels that computes the same outputs from the same inputs, so that the gain of
//! fusion shows. GPU only: without one it prints `skipped: <reason>` and exits successfully.
//!
//!     cargo bench --bench kernels                  # everything, then a summary table
//!     cargo bench --bench kernels -- conv3x3       # criterion's filter on benchmark ids
//!     DENSENET_BENCH_PRECISION=bf16 cargo bench --bench kernels   # one precision (default: fp32,tf32,bf16)
//!
//! Ids are `<precision>/<model>/<site>/<op>` and `<precision>/<model>/<site>/<op>/unfused`
//! (the unfused chains are the baseline's kernels, which are f32 at every precision, so bf16 has none: at bf16
//! the activation buffers are bf16, as the network allocates them); every op is called through
//! the op-family traits (`backend::prelude`) on `CudaBackend`. Criterion times `iters` launches and then
//! `synchronize()`s inside the timed region, so queued kernels are counted; one untimed launch
//! before the first timed one loads the kernel's module. The summary table at the end gives
//! the mean time per launch over every launch criterion timed, GFLOP/s, GB/s (10⁹ bytes) and
//! the unfused chain's time over the fused op's.
//!
//! Sites: `blockN` is the last dense layer of block N, whose input is the widest (c_in = C − k
//! channels of the block's storage, pitch C): its 1×1 (c_in → 4k) and 3×3 (4k → k)
//! convolutions, the statistics of Z and of the k new channels, Z's BN backward and the
//! deferred correction of the new channels. `transitionN` follows block N (C → ⌊C/2⌋
//! channels, 2×2 average pool). `stem`, `head` (norm5, global pool, classifier, loss) and
//! `sgd` (all parameters) complete the step.
//!
//! Counts (P input pixels, P' output pixels, c_i → c_o channels, k×k kernel; activations of
//! 2 bytes at bf16, every other value a 4-byte float):
//! * FLOPs of a convolution: 2·P'·k²·c_i·c_o (all taps, padding included; the BN-ReLU
//!   prologue's ~3·P·c_i and the pool's adds are not counted); wgrad and dgrad the same;
//!   linear 2·n·c_i·c_o forward, twice that backward. Per element: channel_stats 3 (two
//!   passes: a sum, then squared deviations accumulated), bn_backward_elementwise 5,
//!   bn_correction 4, SGD with Nesterov momentum and weight decay 8. Pools and the loss: none.
//! * Bytes: the least traffic the op's function needs — each input read once, each output
//!   written once, an accumulated output (`+=`) read and written. A kernel that reads its
//!   input twice, or a chain that stores intermediates, moves more and shows a lower GB/s.
//!   Unfused chains are given their fused op's counts, so the rates compare directly.
//!
//! Unfused chains (the textbook path of `baseline::BaselineNetwork`, from the fused op's inputs):
//! * convolution forward `bn_apply → relu_fwd → conv_fwd`, weight gradient `bn_apply →
//!   relu_fwd → conv_wgrad`, data gradient `conv_dgrad → bn_apply → relu_bwd → bn_grad_sums`
//!   (the fused 1×1 and transition data gradients also scale by the BN's a and write into the
//!   gradient storage, which the chain leaves out: its time is a lower bound);
//! * transition: the same with `avg_pool_fwd` / `avg_pool_bwd` at the pool (pool first, as the
//!   fused op);
//! * stem max-pool and head global pool: `bn_apply → relu_fwd → max_pool_fwd / avg_pool_fwd`;
//!   backward the pool's backward (the max-pool's after recomputing its input), `relu_bwd`,
//!   `bn_grad_sums`.
//!
//! The chains' convolutions run `conv.cu` (the stems' direct convolution, 128×32 tiles), not
//! the fused ops' 64×64 GEMM tiles, so a gain also contains that difference.

use criterion::Criterion;
use densenet::backend::cuda::CudaBackend;
use densenet::backend::prelude::*;
use densenet::backend::{
    At, Backend, BnRef, Category, ConvGeom, Mat, PoolWindow, SgdParams, Spatial, StatsRef,
};
use densenet::backend::{AtMut, LinearGrads, StatsMut, View, ViewMut};
use densenet::config::{DenseNetConfig, Stem};
use densenet::error::Result;
use densenet::params::ParamLayout;
use densenet::{Dtype, Precision};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};

const BATCH: usize = 64;
const CONV1: ConvGeom = ConvGeom { kernel: 1, stride: 1, pad: 0 };
const CONV3: ConvGeom = ConvGeom { kernel: 3, stride: 1, pad: 1 };
const POOL2: PoolWindow = PoolWindow { h: 2, w: 2 };
/// The ImageNet stem's max-pool.
const MAX_POOL: ConvGeom = ConvGeom { kernel: 3, stride: 2, pad: 1 };

/// A network whose shapes are benchmarked: the last dense layer of each block in
/// `layer_blocks` and the transition after each block in `transitions` (indices from 0).
struct Model {
    name: &'static str,
    cfg: DenseNetConfig,
    layer_blocks: &'static [usize],
    transitions: &'static [usize],
}

fn models() -> Result<Vec<Model>> {
    Ok(vec![
        Model {
            name: "densenet121",
            cfg: DenseNetConfig::preset("densenet121")?,
            layer_blocks: &[0, 2],
            transitions: &[0, 2],
        },
        Model {
            name: "bc100",
            cfg: DenseNetConfig::bc_cifar(100, 12)?,
            layer_blocks: &[0, 2],
            transitions: &[0, 1],
        },
    ])
}

/// One line of the summary table.
struct Row {
    id: String,
    flops: f64,
    bytes: f64,
    seconds: f64,
    unfused: Option<f64>,
}

/// Criterion plus the rows of the summary table.
struct Bench<'a, B: Backend + UnfusedOps> {
    be: B,
    c: &'a mut Criterion,
    rows: Vec<Row>,
}

impl<B: Backend + UnfusedOps> Bench<'_, B> {
    /// Benchmarks `launch(ctx)` as `id`; the mean seconds per timed launch, `None` when
    /// criterion's filter skipped it.
    fn time<C>(
        &mut self,
        id: &str,
        ctx: &mut C,
        mut launch: impl FnMut(&mut C) -> Result<()>,
    ) -> Option<f64> {
        let be = &self.be;
        let (mut launches, mut total, mut warm) = (0u64, Duration::ZERO, false);
        self.c.bench_function(&format!("{}/{id}", be.precision()), |b| {
            b.iter_custom(|iters| {
                let fail = |e: densenet::Error| -> ! { panic!("{id}: {e}") };
                if !warm {
                    launch(ctx).unwrap_or_else(|e| fail(e));
                    be.synchronize().unwrap_or_else(|e| fail(e));
                    warm = true;
                }
                let start = Instant::now();
                for _ in 0..iters {
                    launch(ctx).unwrap_or_else(|e| fail(e));
                }
                be.synchronize().unwrap_or_else(|e| fail(e));
                let elapsed = start.elapsed();
                launches += iters;
                total += elapsed;
                elapsed
            })
        });
        (launches > 0).then(|| total.as_secs_f64() / launches as f64)
    }

    /// Bytes of `activations` elements of the storage dtype (2 bytes at bf16, else 4) and of
    /// `floats` f32 values.
    fn bytes(&self, activations: &[usize], floats: &[usize]) -> f64 {
        let size = self.be.precision().storage().size();
        (size * activations.iter().sum::<usize>() + 4 * floats.iter().sum::<usize>()) as f64
    }

    /// An op without an unfused counterpart.
    fn op<C>(
        &mut self,
        id: String,
        flops: f64,
        bytes: f64,
        ctx: &mut C,
        launch: impl FnMut(&mut C) -> Result<()>,
    ) {
        if let Some(seconds) = self.time(&id, ctx, launch) {
            self.rows.push(Row { id, flops, bytes, seconds, unfused: None });
        }
    }

    /// A fused op and the unfused chain computing the same outputs. At bf16 there is no chain:
    /// the baseline's unfused kernels are f32 only, and the convolutions the chains end in take
    /// the bf16 activations, so no chain of them connects the fused op's inputs and outputs.
    fn fused<C>(
        &mut self,
        id: String,
        flops: f64,
        bytes: f64,
        ctx: &mut C,
        fused: impl FnMut(&mut C) -> Result<()>,
        unfused: impl FnMut(&mut C) -> Result<()>,
    ) {
        let seconds = self.time(&id, ctx, fused);
        let chain = self.be.precision().storage() == Dtype::F32;
        let unfused = if chain { self.time(&format!("{id}/unfused"), ctx, unfused) } else { None };
        if let Some(seconds) = seconds {
            self.rows.push(Row { id, flops, bytes, seconds, unfused });
        }
    }
}

/// Where one batch-norm finds its statistics (in a stats buffer) and γ, β (in `params`).
#[derive(Clone, Copy)]
struct Norm {
    mean: usize,
    var: usize,
    gamma: usize,
    beta: usize,
}

fn bn<'a, T>(stats: &'a T, params: &'a T, n: Norm) -> BnRef<'a, T> {
    BnRef { stats, mean: n.mean, var: n.var, params, gamma: n.gamma, beta: n.beta }
}

fn stats_of<T>(stats: &T, n: Norm) -> StatsRef<'_, T> {
    StatsRef { stats, mean: n.mean, var: n.var }
}

/// Host values of a parameter buffer, laid out piece by piece.
struct Params {
    values: Vec<f32>,
    rng: ChaCha8Rng,
}

impl Params {
    fn new() -> Self {
        Params { values: Vec::new(), rng: ChaCha8Rng::seed_from_u64(1) }
    }
    /// `len` weights uniform in [−1, 1); their offset.
    fn weights(&mut self, len: usize) -> usize {
        let offset = self.values.len();
        let rng = &mut self.rng;
        self.values.extend((0..len).map(|_| rng.random_range(-1.0f32..1.0)));
        offset
    }
    /// γ = 1, β = 0 for `channels` channels whose statistics sit at `mean`, `var`: about half
    /// of the ReLUs pass, as in training.
    fn norm(&mut self, channels: usize, mean: usize, var: usize) -> Norm {
        let gamma = self.values.len();
        self.values.extend(std::iter::repeat_n(1.0, channels));
        let beta = self.values.len();
        self.values.extend(std::iter::repeat_n(0.0, channels));
        Norm { mean, var, gamma, beta }
    }
}

/// A buffer of `len` elements of `dtype` uniform in [−1, 1).
fn random<B: Backend + UnfusedOps>(be: &B, len: usize, dtype: Dtype, seed: u64) -> Result<B::Buf> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let host: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut buf = be.alloc_as(len, dtype, Category::Workspace)?;
    be.upload(&mut buf, 0, &host)?;
    Ok(buf)
}

fn zeros<B: Backend + UnfusedOps>(be: &B, len: usize, dtype: Dtype) -> Result<B::Buf> {
    be.alloc_as(len, dtype, Category::Workspace)
}

fn upload<B: Backend + UnfusedOps>(be: &B, host: &[f32]) -> Result<B::Buf> {
    let mut buf = be.alloc(host.len(), Category::Workspace)?;
    be.upload(&mut buf, 0, host)?;
    Ok(buf)
}

// ---- dense layers and transitions ------------------------------------------------------------

/// One dense block at batch 64: its storage S (random) with statistics, the gradient storage,
/// the last layer's bottleneck Z and its gradient, the transition's output gradient, weights,
/// and the unfused chains' temporaries.
struct Block<B: Backend + UnfusedOps> {
    be: B,
    shape: Spatial,
    /// Storage pitch C, last layer's input c_in, growth k, bottleneck 4k, transition output.
    c: usize,
    c_in: usize,
    k: usize,
    bott: usize,
    c_out: usize,
    s: B::Buf,
    g: B::Buf,
    /// `[S mean (C) | S var (C) | Z mean | Z var]`.
    stats: B::Buf,
    z: B::Buf,
    dz: B::Buf,
    y: B::Buf,
    dy: B::Buf,
    params: B::Buf,
    grads: B::Buf,
    sums: B::Buf,
    /// Deferred-correction accumulators `[α (C) | β (C)]`, zero.
    corr: B::Buf,
    /// P × max(C, 4k) each.
    t1: B::Buf,
    t2: B::Buf,
    norm1: Norm,
    norm2: Norm,
    w1: usize,
    w3: usize,
    wt: usize,
}

impl<B: Backend + UnfusedOps + Clone> Block<B> {
    fn new(be: &B, cfg: &DenseNetConfig, block: usize) -> Result<Self> {
        let geo = cfg.geometry(cfg.default_size().0, cfg.default_size().1)?.blocks[block];
        let shape = Spatial { n: BATCH, h: geo.height, w: geo.width };
        let (p, c, k, bott) = (shape.pixels(), geo.channels, cfg.growth, cfg.bottleneck());
        let (c_in, c_out) = (c - k, cfg.transition_out(c));
        let pooled = POOL2.out(shape).pixels();
        let mut params = Params::new();
        let (w1, w3, wt) =
            (params.weights(bott * c_in), params.weights(k * 9 * bott), params.weights(c_out * c));
        let norm1 = params.norm(c, 0, c);
        let norm2 = params.norm(bott, 2 * c, 2 * c + bott);
        let act = be.precision().storage();
        let mut x = Block {
            be: be.clone(),
            shape,
            c,
            c_in,
            k,
            bott,
            c_out,
            s: random(be, p * c, act, 2)?,
            g: random(be, p * c, act, 3)?,
            stats: zeros(be, 2 * c + 2 * bott, Dtype::F32)?,
            z: zeros(be, p * bott, act)?,
            dz: random(be, p * bott, act, 4)?,
            y: zeros(be, pooled * c_out, act)?,
            dy: random(be, pooled * c_out, act, 5)?,
            grads: zeros(be, params.values.len(), Dtype::F32)?,
            params: upload(be, &params.values)?,
            sums: zeros(be, 2 * c.max(bott), Dtype::F32)?,
            corr: zeros(be, 2 * c, Dtype::F32)?,
            t1: zeros(be, p * c.max(bott), Dtype::F32)?,
            t2: zeros(be, p * c.max(bott), Dtype::F32)?,
            norm1,
            norm2,
            w1,
            w3,
            wt,
        };
        // Real statistics, and Z as the layer's forward computes it.
        be.channel_stats(
            View::new(&x.s, Mat::dense(0, p, c)),
            StatsMut::new(&mut x.stats, norm1.mean, norm1.var),
        )?;
        let xm = Mat { offset: 0, rows: p, cols: c_in, ld: c };
        let w = At { buf: &x.params, offset: w1 };
        be.bn_relu_conv1x1_fwd(
            View::new(&x.s, xm).bn_relu(bn(&x.stats, &x.params, norm1)),
            w,
            ViewMut::new(&mut x.z, Mat::dense(0, p, bott)),
        )?;
        be.channel_stats(
            View::new(&x.z, Mat::dense(0, p, bott)),
            StatsMut::new(&mut x.stats, norm2.mean, norm2.var),
        )?;
        Ok(x)
    }
}

/// The last dense layer's ops, in the order of a training step.
fn bench_layer<B: Backend + UnfusedOps>(h: &mut Bench<'_, B>, site: &str, x: &mut Block<B>) {
    let (shape, c, c_in, k, bott) = (x.shape, x.c, x.c_in, x.k, x.bott);
    let p = shape.pixels();
    // The layer's input prefix of S, the same columns packed densely, Z, and the k new
    // channels of S (also their gradient's columns in G).
    let xm = Mat { offset: 0, rows: p, cols: c_in, ld: c };
    let xd = Mat::dense(0, p, c_in);
    let zm = Mat::dense(0, p, bott);
    let ym = Mat { offset: c_in, rows: p, cols: k, ld: c };
    let new = Norm { mean: c_in, var: c + c_in, gamma: 0, beta: 0 };
    let (pf, c_inf, kf, bottf) = (p as f64, c_in as f64, k as f64, bott as f64);
    let flops1 = 2.0 * pf * c_inf * bottf;
    let flops3 = 2.0 * 9.0 * pf * bottf * kf;

    h.fused(
        format!("{site}/conv1x1_fwd"),
        flops1,
        h.bytes(&[p * c_in, p * bott], &[bott * c_in]),
        x,
        |x| {
            let w = At { buf: &x.params, offset: x.w1 };
            x.be.bn_relu_conv1x1_fwd(
                View::new(&x.s, xm).bn_relu(bn(&x.stats, &x.params, x.norm1)),
                w,
                ViewMut::new(&mut x.z, zm),
            )
        },
        |x| {
            x.be.bn_apply(
                View::new(&x.s, xm),
                bn(&x.stats, &x.params, x.norm1),
                ViewMut::new(&mut x.t1, xd),
            )?;
            x.be.relu_fwd(View::new(&x.t1, xd), ViewMut::new(&mut x.t2, xd))?;
            x.be.conv_fwd(
                View::new(&x.t2, xd),
                shape,
                CONV1,
                At { buf: &x.params, offset: x.w1 },
                ViewMut::new(&mut x.z, zm),
            )
        },
    );
    h.op(format!("{site}/channel_stats_z"), 3.0 * pf * bottf, h.bytes(&[p * bott], &[]), x, |x| {
        x.be.channel_stats(View::new(&x.z, zm), StatsMut::new(&mut x.stats, x.norm2.mean, x.norm2.var))
    });
    h.fused(
        format!("{site}/conv3x3_fwd"),
        flops3,
        h.bytes(&[p * bott, p * k], &[9 * bott * k]),
        x,
        |x| {
            let w = At { buf: &x.params, offset: x.w3 };
            x.be.bn_relu_conv3x3_fwd(
                View::new(&x.z, zm).bn_relu(bn(&x.stats, &x.params, x.norm2)),
                shape,
                w,
                ViewMut::new(&mut x.s, ym),
            )
        },
        |x| {
            x.be.bn_apply(
                View::new(&x.z, zm),
                bn(&x.stats, &x.params, x.norm2),
                ViewMut::new(&mut x.t1, zm),
            )?;
            x.be.relu_fwd(View::new(&x.t1, zm), ViewMut::new(&mut x.t2, zm))?;
            x.be.conv_fwd(
                View::new(&x.t2, zm),
                shape,
                CONV3,
                At { buf: &x.params, offset: x.w3 },
                ViewMut::new(&mut x.s, ym),
            )
        },
    );
    h.op(format!("{site}/channel_stats_new"), 3.0 * pf * kf, h.bytes(&[p * k], &[]), x, |x| {
        x.be.channel_stats(View::new(&x.s, ym), StatsMut::new(&mut x.stats, new.mean, new.var))
    });
    // The accumulators are zero, so repeated launches leave G as it was.
    h.op(format!("{site}/bn_correction"), 4.0 * pf * kf, h.bytes(&[3 * p * k], &[]), x, |x| {
        x.be.bn_correction(
            ViewMut::new(&mut x.g, ym),
            View::new(&x.s, ym),
            stats_of(&x.stats, new),
            &x.corr,
            c_in,
            c + c_in,
        )
    });
    h.fused(
        format!("{site}/conv3x3_wgrad"),
        flops3,
        h.bytes(&[p * bott, p * k], &[2 * 9 * bott * k]),
        x,
        |x| {
            x.be.bn_relu_conv3x3_wgrad(
                View::new(&x.z, zm).bn_relu(bn(&x.stats, &x.params, x.norm2)),
                shape,
                View::new(&x.g, ym),
                AtMut::new(&mut x.grads, x.w3),
            )
        },
        |x| {
            x.be.bn_apply(
                View::new(&x.z, zm),
                bn(&x.stats, &x.params, x.norm2),
                ViewMut::new(&mut x.t1, zm),
            )?;
            x.be.relu_fwd(View::new(&x.t1, zm), ViewMut::new(&mut x.t2, zm))?;
            x.be.conv_wgrad(
                View::new(&x.t2, zm),
                shape,
                CONV3,
                View::new(&x.g, ym),
                AtMut::new(&mut x.grads, x.w3),
            )
        },
    );
    h.fused(
        format!("{site}/conv3x3_dgrad"),
        flops3,
        h.bytes(&[p * k, p * bott, p * bott], &[9 * bott * k]),
        x,
        |x| {
            let w = At { buf: &x.params, offset: x.w3 };
            let bn2 = bn(&x.stats, &x.params, x.norm2);
            x.be.bn_relu_conv3x3_dgrad(
                View::new(&x.g, ym),
                shape,
                w,
                View::new(&x.z, zm).bn_relu(bn2),
                ViewMut::new(&mut x.dz, zm),
                &mut x.sums,
            )
        },
        |x| {
            x.be.conv_dgrad(
                View::new(&x.g, ym),
                shape,
                CONV3,
                At { buf: &x.params, offset: x.w3 },
                ViewMut::new(&mut x.dz, zm),
            )?;
            x.be.bn_apply(
                View::new(&x.z, zm),
                bn(&x.stats, &x.params, x.norm2),
                ViewMut::new(&mut x.t1, zm),
            )?;
            x.be.relu_bwd(ViewMut::new(&mut x.dz, zm), View::new(&x.t1, zm))?;
            x.be.bn_grad_sums(
                View::new(&x.dz, zm),
                View::new(&x.z, zm),
                stats_of(&x.stats, x.norm2),
                &mut x.sums,
            )
        },
    );
    h.op(
        format!("{site}/bn_backward_elementwise"),
        5.0 * pf * bottf,
        h.bytes(&[3 * p * bott], &[]),
        x,
        |x| {
            x.be.bn_backward_elementwise(
                ViewMut::new(&mut x.dz, zm),
                View::new(&x.z, zm),
                bn(&x.stats, &x.params, x.norm2),
                &x.sums,
            )
        },
    );
    h.fused(
        format!("{site}/conv1x1_wgrad"),
        flops1,
        h.bytes(&[p * c_in, p * bott], &[2 * bott * c_in]),
        x,
        |x| {
            x.be.bn_relu_conv1x1_wgrad(
                View::new(&x.s, xm).bn_relu(bn(&x.stats, &x.params, x.norm1)),
                View::new(&x.dz, zm),
                AtMut::new(&mut x.grads, x.w1),
            )
        },
        |x| {
            x.be.bn_apply(
                View::new(&x.s, xm),
                bn(&x.stats, &x.params, x.norm1),
                ViewMut::new(&mut x.t1, xd),
            )?;
            x.be.relu_fwd(View::new(&x.t1, xd), ViewMut::new(&mut x.t2, xd))?;
            x.be.conv_wgrad(
                View::new(&x.t2, xd),
                shape,
                CONV1,
                View::new(&x.dz, zm),
                AtMut::new(&mut x.grads, x.w1),
            )
        },
    );
    h.fused(
        format!("{site}/conv1x1_dgrad"),
        flops1,
        h.bytes(&[p * bott, p * c_in, 2 * p * c_in], &[bott * c_in]),
        x,
        |x| {
            let w = At { buf: &x.params, offset: x.w1 };
            let bn1 = bn(&x.stats, &x.params, x.norm1);
            x.be.bn_relu_conv1x1_dgrad(
                View::new(&x.dz, zm),
                w,
                View::new(&x.s, xm).bn_relu(bn1),
                ViewMut::new(&mut x.g, xm),
                true,
                &mut x.sums,
            )
        },
        |x| {
            x.be.conv_dgrad(
                View::new(&x.dz, zm),
                shape,
                CONV1,
                At { buf: &x.params, offset: x.w1 },
                ViewMut::new(&mut x.t2, xd),
            )?;
            x.be.bn_apply(
                View::new(&x.s, xm),
                bn(&x.stats, &x.params, x.norm1),
                ViewMut::new(&mut x.t1, xd),
            )?;
            x.be.relu_bwd(ViewMut::new(&mut x.t2, xd), View::new(&x.t1, xd))?;
            x.be.bn_grad_sums(
                View::new(&x.t2, xd),
                View::new(&x.s, xm),
                stats_of(&x.stats, x.norm1),
                &mut x.sums,
            )
        },
    );
}

/// The transition after the block: BN-ReLU-avgpool2-conv1x1, C → ⌊C/2⌋.
fn bench_transition<B: Backend + UnfusedOps>(h: &mut Bench<'_, B>, site: &str, x: &mut Block<B>) {
    let (shape, c, c_out) = (x.shape, x.c, x.c_out);
    let pooled = POOL2.out(shape);
    let (p, q) = (shape.pixels(), pooled.pixels());
    let all = Mat::dense(0, p, c);
    let pm = Mat::dense(0, q, c);
    let ym = Mat::dense(0, q, c_out);
    let flops = 2.0 * q as f64 * c as f64 * c_out as f64;

    // BN-ReLU of S, pooled, into t1 (the chains' common prefix).
    let pool_chain = |x: &mut Block<B>| -> Result<()> {
        x.be.bn_apply(View::new(&x.s, all), bn(&x.stats, &x.params, x.norm1), ViewMut::new(&mut x.t1, all))?;
        x.be.relu_fwd(View::new(&x.t1, all), ViewMut::new(&mut x.t2, all))?;
        x.be.avg_pool_fwd(View::new(&x.t2, all), shape, POOL2, ViewMut::new(&mut x.t1, pm))
    };
    h.fused(
        format!("{site}/fwd"),
        flops,
        h.bytes(&[p * c, q * c_out], &[c * c_out]),
        x,
        |x| {
            let w = At { buf: &x.params, offset: x.wt };
            x.be.bn_relu_avgpool_conv1x1_fwd(
                View::new(&x.s, all).bn_relu(bn(&x.stats, &x.params, x.norm1)),
                shape,
                w,
                ViewMut::new(&mut x.y, ym),
            )
        },
        |x| {
            pool_chain(x)?;
            x.be.conv_fwd(
                View::new(&x.t1, pm),
                pooled,
                CONV1,
                At { buf: &x.params, offset: x.wt },
                ViewMut::new(&mut x.y, ym),
            )
        },
    );
    h.fused(
        format!("{site}/wgrad"),
        flops,
        h.bytes(&[p * c, q * c_out], &[2 * c * c_out]),
        x,
        |x| {
            let bn1 = bn(&x.stats, &x.params, x.norm1);
            x.be.bn_relu_avgpool_conv1x1_wgrad(
                View::new(&x.s, all).bn_relu(bn1),
                shape,
                View::new(&x.dy, ym),
                AtMut::new(&mut x.grads, x.wt),
            )
        },
        |x| {
            pool_chain(x)?;
            x.be.conv_wgrad(
                View::new(&x.t1, pm),
                pooled,
                CONV1,
                View::new(&x.dy, ym),
                AtMut::new(&mut x.grads, x.wt),
            )
        },
    );
    h.fused(
        format!("{site}/dgrad"),
        flops,
        h.bytes(&[q * c_out, p * c, p * c], &[c * c_out]),
        x,
        |x| {
            let w = At { buf: &x.params, offset: x.wt };
            let bn1 = bn(&x.stats, &x.params, x.norm1);
            x.be.bn_relu_avgpool_conv1x1_dgrad(
                View::new(&x.dy, ym),
                w,
                View::new(&x.s, all).bn_relu(bn1),
                shape,
                ViewMut::new(&mut x.g, all),
                &mut x.sums,
            )
        },
        |x| {
            x.be.conv_dgrad(
                View::new(&x.dy, ym),
                pooled,
                CONV1,
                At { buf: &x.params, offset: x.wt },
                ViewMut::new(&mut x.t1, pm),
            )?;
            x.be.avg_pool_bwd(View::new(&x.t1, pm), shape, POOL2, ViewMut::new(&mut x.t2, all))?;
            x.be.bn_apply(
                View::new(&x.s, all),
                bn(&x.stats, &x.params, x.norm1),
                ViewMut::new(&mut x.t1, all),
            )?;
            x.be.relu_bwd(ViewMut::new(&mut x.t2, all), View::new(&x.t1, all))?;
            x.be.bn_grad_sums(
                View::new(&x.t2, all),
                View::new(&x.s, all),
                stats_of(&x.stats, x.norm1),
                &mut x.sums,
            )
        },
    );
}

// ---- stem ------------------------------------------------------------------------------------

/// The stem convolution (3 → c0 channels) and, for the ImageNet stem, BN-ReLU-maxpool.
struct StemBufs<B: Backend + UnfusedOps> {
    be: B,
    input: B::Buf,
    /// Conv output T and its gradient; their statistics.
    t: B::Buf,
    dt: B::Buf,
    stats: B::Buf,
    dx: B::Buf,
    /// Max-pool output gradient (ImageNet stem).
    y: B::Buf,
    dy: B::Buf,
    params: B::Buf,
    grads: B::Buf,
    sums: B::Buf,
    t1: B::Buf,
    t2: B::Buf,
    norm: Norm,
    w: usize,
}

fn bench_stem<B: Backend + UnfusedOps + Clone>(h: &mut Bench<'_, B>, be: &B, model: &Model) -> Result<()> {
    let cfg = &model.cfg;
    let (height, width) = cfg.default_size();
    let geom = match cfg.stem {
        Stem::Cifar => CONV3,
        Stem::Imagenet => ConvGeom { kernel: 7, stride: 2, pad: 3 },
    };
    let (c_in, c0, kk) = (cfg.in_channels, cfg.init_features, geom.kernel * geom.kernel);
    let in_shape = Spatial { n: BATCH, h: height, w: width };
    let t_shape = geom.out(in_shape);
    let pool_shape = MAX_POOL.out(t_shape);
    let (pi, pt, ps) = (in_shape.pixels(), t_shape.pixels(), pool_shape.pixels());
    let mut params = Params::new();
    let w = params.weights(c0 * kk * c_in);
    let norm = params.norm(c0, 0, c0);
    let act = be.precision().storage();
    let mut x = StemBufs {
        be: be.clone(),
        input: random(be, pi * c_in, act, 6)?,
        t: zeros(be, pt * c0, act)?,
        dt: random(be, pt * c0, act, 7)?,
        stats: zeros(be, 2 * c0, Dtype::F32)?,
        dx: zeros(be, pi * c_in, act)?,
        y: zeros(be, ps * c0, act)?,
        dy: random(be, ps * c0, act, 8)?,
        grads: zeros(be, params.values.len(), Dtype::F32)?,
        params: upload(be, &params.values)?,
        sums: zeros(be, 2 * c0, Dtype::F32)?,
        t1: zeros(be, pt * c0, Dtype::F32)?,
        t2: zeros(be, pt * c0, Dtype::F32)?,
        norm,
        w,
    };
    let (xm, tm, sm) = (Mat::dense(0, pi, c_in), Mat::dense(0, pt, c0), Mat::dense(0, ps, c0));
    be.conv_fwd(
        View::new(&x.input, xm),
        in_shape,
        geom,
        At { buf: &x.params, offset: w },
        ViewMut::new(&mut x.t, tm),
    )?;
    be.channel_stats(View::new(&x.t, tm), StatsMut::new(&mut x.stats, norm.mean, norm.var))?;

    let site = format!("{}/stem", model.name);
    let flops = 2.0 * pt as f64 * kk as f64 * c_in as f64 * c0 as f64;
    let weights = c0 * kk * c_in;
    h.op(format!("{site}/conv_fwd"), flops, h.bytes(&[pi * c_in, pt * c0], &[weights]), &mut x, |x| {
        x.be.conv_fwd(
            View::new(&x.input, xm),
            in_shape,
            geom,
            At { buf: &x.params, offset: x.w },
            ViewMut::new(&mut x.t, tm),
        )
    });
    h.op(format!("{site}/conv_wgrad"), flops, h.bytes(&[pi * c_in, pt * c0], &[2 * weights]), &mut x, |x| {
        x.be.conv_wgrad(
            View::new(&x.input, xm),
            in_shape,
            geom,
            View::new(&x.dt, tm),
            AtMut::new(&mut x.grads, x.w),
        )
    });
    h.op(format!("{site}/conv_dgrad"), flops, h.bytes(&[pt * c0, pi * c_in], &[weights]), &mut x, |x| {
        x.be.conv_dgrad(
            View::new(&x.dt, tm),
            in_shape,
            geom,
            At { buf: &x.params, offset: x.w },
            ViewMut::new(&mut x.dx, xm),
        )
    });
    if cfg.stem == Stem::Cifar {
        return Ok(());
    }
    // BN-ReLU of T into t1 (BN output) and t2 (ReLU output, the max-pool's input).
    let bn_relu = |x: &mut StemBufs<B>| -> Result<()> {
        x.be.bn_apply(View::new(&x.t, tm), bn(&x.stats, &x.params, x.norm), ViewMut::new(&mut x.t1, tm))?;
        x.be.relu_fwd(View::new(&x.t1, tm), ViewMut::new(&mut x.t2, tm))
    };
    h.fused(
        format!("{site}/maxpool_fwd"),
        0.0,
        h.bytes(&[pt * c0, ps * c0], &[]),
        &mut x,
        |x| {
            x.be.bn_relu_maxpool_fwd(
                View::new(&x.t, tm).bn_relu(bn(&x.stats, &x.params, x.norm)),
                t_shape,
                ViewMut::new(&mut x.y, sm),
            )
        },
        |x| {
            bn_relu(x)?;
            x.be.max_pool_fwd(View::new(&x.t2, tm), t_shape, ViewMut::new(&mut x.y, sm))
        },
    );
    h.fused(
        format!("{site}/maxpool_bwd"),
        0.0,
        h.bytes(&[ps * c0, pt * c0, pt * c0], &[]),
        &mut x,
        |x| {
            let bn0 = bn(&x.stats, &x.params, x.norm);
            x.be.bn_relu_maxpool_bwd(
                View::new(&x.dy, sm),
                View::new(&x.t, tm).bn_relu(bn0),
                t_shape,
                ViewMut::new(&mut x.dt, tm),
                &mut x.sums,
            )
        },
        |x| {
            bn_relu(x)?;
            x.be.max_pool_bwd(
                View::new(&x.dy, sm),
                View::new(&x.t2, tm),
                t_shape,
                ViewMut::new(&mut x.dt, tm),
            )?;
            x.be.relu_bwd(ViewMut::new(&mut x.dt, tm), View::new(&x.t1, tm))?;
            x.be.bn_grad_sums(
                View::new(&x.dt, tm),
                View::new(&x.t, tm),
                stats_of(&x.stats, x.norm),
                &mut x.sums,
            )
        },
    );
    Ok(())
}

// ---- head and optimiser --------------------------------------------------------------------

/// norm5 + global pool over the last block's storage, the classifier and the loss.
struct HeadBufs<B: Backend + UnfusedOps> {
    be: B,
    x: B::Buf,
    g: B::Buf,
    stats: B::Buf,
    pooled: B::Buf,
    dpooled: B::Buf,
    logits: B::Buf,
    dlogits: B::Buf,
    labels: B::Buf,
    loss: B::Buf,
    params: B::Buf,
    grads: B::Buf,
    sums: B::Buf,
    t1: B::Buf,
    t2: B::Buf,
    norm: Norm,
    fc: usize,
    bias: usize,
}

fn bench_head<B: Backend + UnfusedOps + Clone>(h: &mut Bench<'_, B>, be: &B, model: &Model) -> Result<()> {
    let cfg = &model.cfg;
    let (height, width) = cfg.default_size();
    let last = *cfg.geometry(height, width)?.last();
    let shape = Spatial { n: BATCH, h: last.height, w: last.width };
    let (p, c, n, classes) = (shape.pixels(), last.channels, BATCH, cfg.classes);
    let mut params = Params::new();
    let (fc, bias) = (params.weights(classes * c), params.weights(classes));
    let norm = params.norm(c, 0, c);
    let labels: Vec<f32> = (0..n).map(|i| (i % classes) as f32).collect();
    let act = be.precision().storage();
    let mut x = HeadBufs {
        be: be.clone(),
        x: random(be, p * c, act, 9)?,
        g: zeros(be, p * c, act)?,
        stats: zeros(be, 2 * c, Dtype::F32)?,
        pooled: zeros(be, n * c, Dtype::F32)?,
        dpooled: random(be, n * c, Dtype::F32, 10)?,
        logits: zeros(be, n * classes, Dtype::F32)?,
        dlogits: zeros(be, n * classes, Dtype::F32)?,
        labels: upload(be, &labels)?,
        loss: zeros(be, 1, Dtype::F32)?,
        grads: zeros(be, params.values.len(), Dtype::F32)?,
        params: upload(be, &params.values)?,
        sums: zeros(be, 2 * c, Dtype::F32)?,
        t1: zeros(be, p * c, Dtype::F32)?,
        t2: zeros(be, p * c, Dtype::F32)?,
        norm,
        fc,
        bias,
    };
    let (all, nm) = (Mat::dense(0, p, c), Mat::dense(0, n, c));
    be.channel_stats(View::new(&x.x, all), StatsMut::new(&mut x.stats, norm.mean, norm.var))?;
    let window = PoolWindow { h: shape.h, w: shape.w };
    let site = format!("{}/head", model.name);
    let linear_flops = 2.0 * (n * c * classes) as f64;

    h.fused(
        format!("{site}/global_pool_fwd"),
        0.0,
        h.bytes(&[p * c], &[n * c]),
        &mut x,
        |x| {
            x.be.bn_relu_global_pool_fwd(
                View::new(&x.x, all).bn_relu(bn(&x.stats, &x.params, x.norm)),
                shape,
                &mut x.pooled,
            )
        },
        |x| {
            x.be.bn_apply(
                View::new(&x.x, all),
                bn(&x.stats, &x.params, x.norm),
                ViewMut::new(&mut x.t1, all),
            )?;
            x.be.relu_fwd(View::new(&x.t1, all), ViewMut::new(&mut x.t2, all))?;
            x.be.avg_pool_fwd(View::new(&x.t2, all), shape, window, ViewMut::new(&mut x.pooled, nm))
        },
    );
    h.op(
        format!("{site}/linear_fwd"),
        linear_flops,
        h.bytes(&[], &[n * c, classes * c + classes, n * classes]),
        &mut x,
        |x| {
            let (w, b) = (At { buf: &x.params, offset: x.fc }, At { buf: &x.params, offset: x.bias });
            x.be.linear_fwd(
                View::new(&x.pooled, Mat::dense(0, n, c)),
                w,
                b,
                ViewMut::new(&mut x.logits, Mat::dense(0, n, classes)),
            )
        },
    );
    h.op(format!("{site}/softmax_xent"), 0.0, h.bytes(&[], &[2 * n * classes + n]), &mut x, |x| {
        x.be.softmax_xent(
            View::new(&x.logits, Mat::dense(0, n, classes)),
            &x.labels,
            &mut x.loss,
            ViewMut::new(&mut x.dlogits, Mat::dense(0, n, classes)),
        )
    });
    h.op(
        format!("{site}/linear_bwd"),
        2.0 * linear_flops,
        h.bytes(&[], &[n * classes, n * c, classes * c, 2 * (classes * c + classes), n * c]),
        &mut x,
        |x| {
            let w = At { buf: &x.params, offset: x.fc };
            x.be.linear_bwd(
                View::new(&x.dlogits, Mat::dense(0, n, classes)),
                View::new(&x.pooled, Mat::dense(0, n, c)),
                w,
                LinearGrads::new(&mut x.grads, x.fc, x.bias),
                ViewMut::new(&mut x.dpooled, Mat::dense(0, n, c)),
            )
        },
    );
    h.fused(
        format!("{site}/global_pool_bwd"),
        0.0,
        h.bytes(&[p * c, p * c], &[n * c]),
        &mut x,
        |x| {
            let bn5 = bn(&x.stats, &x.params, x.norm);
            x.be.bn_relu_global_pool_bwd(
                &x.dpooled,
                View::new(&x.x, all).bn_relu(bn5),
                shape,
                ViewMut::new(&mut x.g, all),
                &mut x.sums,
            )
        },
        |x| {
            x.be.avg_pool_bwd(View::new(&x.dpooled, nm), shape, window, ViewMut::new(&mut x.g, all))?;
            x.be.bn_apply(
                View::new(&x.x, all),
                bn(&x.stats, &x.params, x.norm),
                ViewMut::new(&mut x.t1, all),
            )?;
            x.be.relu_bwd(ViewMut::new(&mut x.g, all), View::new(&x.t1, all))?;
            x.be.bn_grad_sums(
                View::new(&x.g, all),
                View::new(&x.x, all),
                stats_of(&x.stats, x.norm),
                &mut x.sums,
            )
        },
    );
    Ok(())
}

/// The fused SGD update over all of the model's parameters.
fn bench_sgd<B: Backend + UnfusedOps>(h: &mut Bench<'_, B>, be: &B, model: &Model) -> Result<()> {
    let n = ParamLayout::new(&model.cfg).num_params;
    let hp = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true };
    let mut bufs =
        (random(be, n, Dtype::F32, 11)?, random(be, n, Dtype::F32, 12)?, zeros(be, n, Dtype::F32)?);
    h.op(format!("{}/sgd", model.name), 8.0 * n as f64, h.bytes(&[], &[5 * n]), &mut bufs, |(p, g, v)| {
        be.sgd_update(p, g, v, n, hp)
    });
    Ok(())
}

// ---- summary ---------------------------------------------------------------------------------

fn format_time(seconds: f64) -> String {
    if seconds < 1e-3 { format!("{:.1} µs", seconds * 1e6) } else { format!("{:.3} ms", seconds * 1e3) }
}

/// Dense multiply-add peak of an H100/H200 SXM by the vendor's datasheet, in FLOP/s, for the
/// arithmetic the convolutions of `precision` run on (plain f32 FMA, TF32 or BF16 tensor
/// cores): the "peak" column's denominator. Other ops run plain f32 whatever the precision.
fn datasheet_peak(precision: Precision) -> f64 {
    match precision {
        Precision::Fp32 => 67e12,
        Precision::Tf32 => 495e12,
        Precision::Bf16 => 989e12,
    }
}

fn print_table(device: &str, precision: Precision, rows: &[Row]) {
    println!(
        "\nkernels on {device} ({precision}), batch {BATCH}: mean time per launch; rates from counted \
         FLOPs and bytes; peak: of the H200's {:.0} TFLOP/s datasheet rate for {precision}",
        datasheet_peak(precision) / 1e12
    );
    println!(
        "{:<44} {:>11} {:>9} {:>6} {:>8} {:>11} {:>8}",
        "benchmark", "time", "GFLOP/s", "peak", "GB/s", "unfused", "gain"
    );
    for r in rows {
        let gflops = if r.flops > 0.0 { format!("{:.0}", r.flops / r.seconds / 1e9) } else { "-".into() };
        let peak = if r.flops > 0.0 {
            format!("{:.0}%", 100.0 * r.flops / r.seconds / datasheet_peak(precision))
        } else {
            "-".into()
        };
        let (unfused, gain) = match r.unfused {
            Some(u) => (format_time(u), format!("{:.2}x", u / r.seconds)),
            None => (String::new(), String::new()),
        };
        println!(
            "{:<44} {:>11} {:>9} {:>6} {:>8.0} {:>11} {:>8}",
            r.id,
            format_time(r.seconds),
            gflops,
            peak,
            r.bytes / r.seconds / 1e9,
            unfused,
            gain
        );
    }
}

/// The precisions to run, from `DENSENET_BENCH_PRECISION` (comma-separated; default all).
fn precisions() -> Result<Vec<Precision>> {
    match std::env::var(PRECISION_VAR) {
        Ok(list) => list.split(',').map(|p| p.trim().parse()).collect(),
        Err(_) => Ok(Precision::ALL.to_vec()),
    }
}

const PRECISION_VAR: &str = "DENSENET_BENCH_PRECISION";

fn main() -> Result<()> {
    let precisions = precisions()?;
    let base = match CudaBackend::new(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            println!("skipped: {e}");
            return Ok(());
        }
    };
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut tables = Vec::new();
    for precision in precisions {
        let gpu = base.clone().with_precision(precision)?;
        let mut h = Bench { be: gpu.clone(), c: &mut c, rows: Vec::new() };
        for model in models()? {
            bench_stem(&mut h, &gpu, &model)?;
            let mut blocks: Vec<usize> =
                model.layer_blocks.iter().chain(model.transitions).copied().collect();
            blocks.sort_unstable();
            blocks.dedup();
            // One block's buffers at a time: densenet121's first block needs about 1 GB.
            for b in blocks {
                let mut x = Block::new(&gpu, &model.cfg, b)?;
                if model.layer_blocks.contains(&b) {
                    bench_layer(&mut h, &format!("{}/block{}", model.name, b + 1), &mut x);
                }
                if model.transitions.contains(&b) {
                    bench_transition(&mut h, &format!("{}/transition{}", model.name, b + 1), &mut x);
                }
            }
            bench_head(&mut h, &gpu, &model)?;
            bench_sgd(&mut h, &gpu, &model)?;
        }
        tables.push((precision, std::mem::take(&mut h.rows)));
    }
    c.final_summary();
    for (precision, rows) in &tables {
        print_table(&base.name(), *precision, rows);
    }
    Ok(())
}
