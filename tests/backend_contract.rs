//! The op contract of `src/backend/validate.rs`, on every backend: each op of the `Backend`
//! trait gets one valid call and a table of invalid ones (a view past the end of its buffer,
//! a pitch smaller than its columns, row counts that disagree, a BN reference out of range, a
//! pixel count that does not match the spatial shape, overlapping outputs, geometry with no
//! output, sizes whose arithmetic overflows). The cpu backend and, with feature `cuda-emu`,
//! the emulated kernels must reject every invalid call with `Error::Shape` and the same
//! message, the emulator before launching any kernel, and must accept the valid call.
//!
//! A bounded fuzzer then feeds every op random perturbations of its valid geometry (small,
//! zero, off-by-one and huge values) on the cpu backend: whatever the contract accepts must
//! run without a panic, whatever it rejects must be `Error::Shape`.

use densenet::Error;
use densenet::backend::cpu::CpuBackend;
use densenet::backend::prelude::*;
use densenet::backend::{
    At, Backend, BnGradTarget, BnRef, Category, ConvGeom, Mat, PoolWindow, SgdParams, Spatial, StatsRef,
};
use densenet::backend::{AtMut, BnSums, LinearGrads, StatsMut, View, ViewMut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Floats of the buffers matrices live in, of the BN buffers (mean and γ at 0, variance and
/// β at 8: up to 8 channels), and of the weight buffer.
const LEN: usize = 256;
const BN_LEN: usize = 16;
const W_LEN: usize = 64;

/// The buffers every call draws from, on one backend: inputs and outputs apart, so that one
/// call can borrow some shared and others mutably.
struct Kit<B: Backend + UnfusedOps> {
    b: B,
    i: Inputs<B>,
    o: Outputs<B>,
}

struct Inputs<B: Backend + UnfusedOps> {
    x: B::Buf,
    dy: B::Buf,
    stats: B::Buf,
    params: B::Buf,
    w: B::Buf,
}

struct Outputs<B: Backend + UnfusedOps> {
    out: B::Buf,
    sums: B::Buf,
    /// 5 floats: too short for the sums of 3 channels, or for 2 × 3 pooled features.
    short: B::Buf,
    corr: B::Buf,
}

impl<B: Backend + UnfusedOps> Kit<B> {
    fn new(b: B) -> Self {
        let buf = |len| b.alloc(len, Category::Workspace).unwrap();
        let mut i =
            Inputs { x: buf(LEN), dy: buf(LEN), stats: buf(BN_LEN), params: buf(BN_LEN), w: buf(W_LEN) };
        let o = Outputs { out: buf(LEN), sums: buf(BN_LEN), short: buf(5), corr: buf(BN_LEN) };
        // Positive variances and γ; zero elsewhere (labels 0 are valid class indices).
        b.upload(&mut i.stats, 8, &[1.0; 8]).unwrap();
        b.upload(&mut i.params, 0, &[1.0; 8]).unwrap();
        Kit { b, i, o }
    }
}

/// Every geometric argument an op may take; each op reads the fields it has.
#[derive(Clone, Copy, Debug)]
struct Geo {
    /// The op's main input (in `x`), its second matrix (in `dy` or `out`) and its input
    /// gradient or elementwise output (in `out`).
    a: Mat,
    b: Mat,
    c: Mat,
    shape: Spatial,
    /// mean, var (in `stats`), γ, β (in `params`).
    bn: [usize; 4],
    w: usize,
    /// Output offsets: [0], [1] in `out` (channel statistics, running statistics, dγ / dβ,
    /// dW / dbias, a plain offset); [2], [3] in `corr` or `w` (α / β, the linear bias).
    off: [usize; 4],
    /// Batch, features, output features of the head; a flat length.
    n: usize,
    k: usize,
    outs: usize,
    len: usize,
    geom: ConvGeom,
    window: PoolWindow,
    /// Sums (or pooled features) go to the 5-float buffer.
    short: bool,
}

/// 2 images of 4×4, 3 input channels at pitch 4, outputs of 2 channels.
const SHAPE: Spatial = Spatial { n: 2, h: 4, w: 4 };
const BASE: Geo = Geo {
    a: Mat { offset: 1, rows: 32, cols: 3, ld: 4 },
    b: Mat { offset: 2, rows: 32, cols: 2, ld: 3 },
    c: Mat { offset: 0, rows: 32, cols: 3, ld: 5 },
    shape: SHAPE,
    bn: [0, 8, 0, 8],
    w: 1,
    off: [0, 8, 0, 8],
    n: 2,
    k: 3,
    outs: 2,
    len: 10,
    geom: ConvGeom { kernel: 3, stride: 1, pad: 1 },
    window: PoolWindow { h: 2, w: 2 },
    short: false,
};
/// The second matrix of a pool (8 pooled pixels, the input's 3 channels).
const POOLED: Mat = Mat { offset: 2, rows: 8, cols: 3, ld: 4 };
/// The second matrix of a transition (8 pooled pixels, 2 output channels).
const HALVED: Mat = Mat { offset: 2, rows: 8, cols: 2, ld: 3 };

/// Floats a matrix spans.
fn span(m: Mat) -> usize {
    if m.rows == 0 || m.cols == 0 { 0 } else { (m.rows - 1) * m.ld + m.cols }
}

/// One float past the end of its buffer.
fn past_end(mut m: Mat) -> Mat {
    m.offset = LEN - span(m) + 1;
    m
}

/// A pitch one less than the columns.
fn narrow(mut m: Mat) -> Mat {
    m.ld = m.cols - 1;
    m
}

type Mutation = (&'static str, fn(Geo) -> Geo);

/// The invalid calls, by name; each op lists those that apply to it.
const MUTATIONS: &[Mutation] = &[
    ("a past end", |g| Geo { a: past_end(g.a), ..g }),
    ("b past end", |g| Geo { b: past_end(g.b), ..g }),
    ("c past end", |g| Geo { c: past_end(g.c), ..g }),
    ("a pitch < cols", |g| Geo { a: narrow(g.a), ..g }),
    ("b pitch < cols", |g| Geo { b: narrow(g.b), ..g }),
    ("c pitch < cols", |g| Geo { c: narrow(g.c), ..g }),
    ("a span overflows", |g| Geo { a: Mat { rows: usize::MAX, ..g.a }, ..g }),
    ("b rows disagree", |g| Geo { b: Mat { rows: g.b.rows - 1, ..g.b }, ..g }),
    ("c rows disagree", |g| Geo { c: Mat { rows: g.c.rows - 1, ..g.c }, ..g }),
    ("b channels disagree", |g| Geo { b: Mat { cols: g.b.cols - 1, ..g.b }, ..g }),
    ("c channels disagree", |g| Geo { c: Mat { cols: g.c.cols - 1, ..g.c }, ..g }),
    ("pixels != shape", |g| Geo { shape: Spatial { h: g.shape.h + 1, ..g.shape }, ..g }),
    ("pixel count overflows", |g| Geo { shape: Spatial { n: usize::MAX, ..g.shape }, ..g }),
    ("bn mean out of range", |g| Geo { bn: [BN_LEN - 2, g.bn[1], g.bn[2], g.bn[3]], ..g }),
    ("bn var out of range", |g| Geo { bn: [g.bn[0], BN_LEN - 2, g.bn[2], g.bn[3]], ..g }),
    ("bn gamma out of range", |g| Geo { bn: [g.bn[0], g.bn[1], BN_LEN - 2, g.bn[3]], ..g }),
    ("bn beta out of range", |g| Geo { bn: [g.bn[0], g.bn[1], g.bn[2], usize::MAX], ..g }),
    ("weight past end", |g| Geo { w: W_LEN - 1, ..g }),
    ("sums too short", |g| Geo { short: true, ..g }),
    ("offset past end", |g| Geo { off: [LEN - 1, g.off[1], g.off[2], g.off[3]], ..g }),
    ("offset overflows", |g| Geo { off: [usize::MAX, g.off[1], g.off[2], g.off[3]], ..g }),
    ("second offset past end", |g| Geo { off: [g.off[0], g.off[1], BN_LEN - 1, g.off[3]], ..g }),
    ("bias past end", |g| Geo { off: [g.off[0], g.off[1], W_LEN - 1, g.off[3]], ..g }),
    ("outputs overlap", |g| Geo { off: [g.off[0], g.off[0] + 1, g.off[2], g.off[3]], ..g }),
    ("second outputs overlap", |g| Geo { off: [g.off[0], g.off[1], g.off[2], g.off[2] + 2], ..g }),
    ("kernel 0", |g| Geo { geom: ConvGeom { kernel: 0, ..g.geom }, ..g }),
    ("stride 0", |g| Geo { geom: ConvGeom { stride: 0, ..g.geom }, ..g }),
    ("padding overflows", |g| Geo { geom: ConvGeom { pad: usize::MAX / 2 + 1, ..g.geom }, ..g }),
    ("window 0", |g| Geo { window: PoolWindow { h: 0, ..g.window }, ..g }),
    ("batch past end", |g| Geo { n: 100, ..g }),
    ("batch size overflows", |g| Geo { n: usize::MAX, ..g }),
    ("length past end", |g| Geo { len: LEN + 1, ..g }),
];

/// Rejections of every matrix of a fused op with a BN and a weight (a, b, c in use).
const MATS3: &[&str] = &[
    "a past end",
    "b past end",
    "c past end",
    "a pitch < cols",
    "b pitch < cols",
    "c pitch < cols",
    "a span overflows",
];
const MATS2_AB: &[&str] =
    &["a past end", "b past end", "a pitch < cols", "b pitch < cols", "a span overflows"];
const MATS2_AC: &[&str] =
    &["a past end", "c past end", "a pitch < cols", "c pitch < cols", "a span overflows"];
const BN: &[&str] =
    &["bn mean out of range", "bn var out of range", "bn gamma out of range", "bn beta out of range"];
const STATS: &[&str] = &["bn mean out of range", "bn var out of range"];
const SPATIAL: &[&str] = &["pixels != shape", "pixel count overflows"];
const CONV: &[&str] = &["kernel 0", "stride 0", "padding overflows"];
const FLAT: &[&str] = &["batch past end", "batch size overflows"];
const OFFSET: &[&str] = &["offset past end", "offset overflows"];

type Call<B> = fn(&mut Kit<B>, &Geo) -> densenet::Result<()>;

struct Op<B: Backend + UnfusedOps> {
    name: &'static str,
    valid: Geo,
    call: Call<B>,
    rejects: Vec<&'static str>,
}

fn op<B: Backend + UnfusedOps>(
    name: &'static str,
    valid: Geo,
    call: Call<B>,
    rejects: &[&[&'static str]],
) -> Op<B> {
    Op { name, valid, call, rejects: rejects.concat() }
}

fn bn<'a, B: Backend + UnfusedOps>(k: &'a Inputs<B>, g: &Geo) -> BnRef<'a, B::Buf> {
    BnRef { stats: &k.stats, mean: g.bn[0], var: g.bn[1], params: &k.params, gamma: g.bn[2], beta: g.bn[3] }
}

fn stats<'a, B: Backend + UnfusedOps>(k: &'a Inputs<B>, g: &Geo) -> StatsRef<'a, B::Buf> {
    StatsRef { stats: &k.stats, mean: g.bn[0], var: g.bn[1] }
}

/// `sums` or, with `g.short`, the buffer too short for them.
fn sums<'a, B: Backend + UnfusedOps>(sums: &'a mut B::Buf, short: &'a mut B::Buf, g: &Geo) -> &'a mut B::Buf {
    if g.short { short } else { sums }
}

/// Every op of the trait that takes buffers, with its valid call and its rejections.
fn ops<B: Backend + UnfusedOps>() -> Vec<Op<B>> {
    let pool = Geo { b: POOLED, ..BASE };
    let halved = Geo { b: HALVED, ..BASE };
    vec![
        op("upload", BASE, |k, g| k.b.upload(&mut k.o.out, g.off[0], &[1.0; 4]), &[OFFSET]),
        op("download", BASE, |k, g| k.b.download(&k.i.x, g.off[0], 4).map(drop), &[OFFSET]),
        op("fill_zero", BASE, |k, g| k.b.fill_zero(&mut k.o.out, g.off[0], 4), &[OFFSET]),
        op(
            "channel_stats",
            BASE,
            |k, g| k.b.channel_stats(View::new(&k.i.x, g.a), StatsMut::new(&mut k.o.out, g.off[0], g.off[1])),
            &[&["a past end", "a pitch < cols", "a span overflows", "outputs overlap"], OFFSET],
        ),
        op(
            "update_running_stats",
            BASE,
            |k, g| {
                k.b.update_running_stats(
                    stats(&k.i, g),
                    g.k,
                    32,
                    StatsMut::new(&mut k.o.out, g.off[0], g.off[1]),
                )
            },
            &[STATS, OFFSET, &["outputs overlap"]],
        ),
        op(
            "bn_relu_conv1x1_fwd",
            BASE,
            |k, g| {
                k.b.bn_relu_conv1x1_fwd(
                    View::new(&k.i.x, g.a).bn_relu(bn(&k.i, g)),
                    At { buf: &k.i.w, offset: g.w },
                    ViewMut::new(&mut k.o.out, g.b),
                )
            },
            &[MATS2_AB, BN, &["b rows disagree", "weight past end"]],
        ),
        op(
            "bn_relu_conv1x1_wgrad",
            BASE,
            |k, g| {
                k.b.bn_relu_conv1x1_wgrad(
                    View::new(&k.i.x, g.a).bn_relu(bn(&k.i, g)),
                    View::new(&k.i.dy, g.b),
                    AtMut::new(&mut k.o.out, g.off[0]),
                )
            },
            &[MATS2_AB, BN, OFFSET, &["b rows disagree"]],
        ),
        op(
            "bn_relu_conv1x1_dgrad",
            BASE,
            |k, g| {
                let w = At { buf: &k.i.w, offset: g.w };
                let s = sums::<B>(&mut k.o.sums, &mut k.o.short, g);
                k.b.bn_relu_conv1x1_dgrad(
                    View::new(&k.i.dy, g.b),
                    w,
                    View::new(&k.i.x, g.a).bn_relu(bn(&k.i, g)),
                    ViewMut::new(&mut k.o.out, g.c),
                    false,
                    s,
                )
            },
            &[
                MATS3,
                BN,
                &[
                    "b rows disagree",
                    "c rows disagree",
                    "c channels disagree",
                    "weight past end",
                    "sums too short",
                ],
            ],
        ),
        op(
            "bn_relu_conv3x3_fwd",
            BASE,
            |k, g| {
                let w = At { buf: &k.i.w, offset: g.w };
                k.b.bn_relu_conv3x3_fwd(
                    View::new(&k.i.x, g.a).bn_relu(bn(&k.i, g)),
                    g.shape,
                    w,
                    ViewMut::new(&mut k.o.out, g.b),
                )
            },
            &[MATS2_AB, BN, SPATIAL, &["b rows disagree", "weight past end"]],
        ),
        op(
            "bn_relu_conv3x3_wgrad",
            BASE,
            |k, g| {
                k.b.bn_relu_conv3x3_wgrad(
                    View::new(&k.i.x, g.a).bn_relu(bn(&k.i, g)),
                    g.shape,
                    View::new(&k.i.dy, g.b),
                    AtMut::new(&mut k.o.out, g.off[0]),
                )
            },
            &[MATS2_AB, BN, SPATIAL, OFFSET, &["b rows disagree"]],
        ),
        op(
            "bn_relu_conv3x3_dgrad",
            BASE,
            |k, g| {
                let w = At { buf: &k.i.w, offset: g.w };
                let s = sums::<B>(&mut k.o.sums, &mut k.o.short, g);
                k.b.bn_relu_conv3x3_dgrad(
                    View::new(&k.i.dy, g.b),
                    g.shape,
                    w,
                    View::new(&k.i.x, g.a).bn_relu(bn(&k.i, g)),
                    ViewMut::new(&mut k.o.out, g.c),
                    s,
                )
            },
            &[
                MATS3,
                BN,
                SPATIAL,
                &[
                    "b rows disagree",
                    "c rows disagree",
                    "c channels disagree",
                    "weight past end",
                    "sums too short",
                ],
            ],
        ),
        op(
            "bn_backward_elementwise",
            BASE,
            |k, g| {
                let s = if g.short { &k.o.short } else { &k.o.sums };
                k.b.bn_backward_elementwise(
                    ViewMut::new(&mut k.o.out, g.c),
                    View::new(&k.i.x, g.a),
                    bn(&k.i, g),
                    s,
                )
            },
            &[MATS2_AC, BN, &["c rows disagree", "c channels disagree", "sums too short"]],
        ),
        op(
            "bn_grad_fold",
            BASE,
            |k, g| {
                let target = BnGradTarget {
                    dgamma: g.off[0],
                    dbeta: g.off[1],
                    correction: Some((g.off[2], g.off[3])),
                };
                let s = if g.short { &k.o.short } else { &k.o.sums };
                k.b.bn_grad_fold(BnSums::new(s, g.k, 32), bn(&k.i, g), &mut k.o.out, &mut k.o.corr, target)
            },
            &[
                BN,
                OFFSET,
                &["sums too short", "second offset past end", "outputs overlap", "second outputs overlap"],
            ],
        ),
        op(
            "bn_correction",
            BASE,
            |k, g| {
                k.b.bn_correction(
                    ViewMut::new(&mut k.o.out, g.c),
                    View::new(&k.i.x, g.a),
                    stats(&k.i, g),
                    &k.o.corr,
                    g.off[2],
                    g.off[3],
                )
            },
            &[MATS2_AC, STATS, &["c rows disagree", "c channels disagree", "second offset past end"]],
        ),
        op(
            "bn_relu_avgpool_conv1x1_fwd",
            halved,
            |k, g| {
                let w = At { buf: &k.i.w, offset: g.w };
                k.b.bn_relu_avgpool_conv1x1_fwd(
                    View::new(&k.i.x, g.a).bn_relu(bn(&k.i, g)),
                    g.shape,
                    w,
                    ViewMut::new(&mut k.o.out, g.b),
                )
            },
            &[MATS2_AB, BN, SPATIAL, &["b rows disagree", "weight past end"]],
        ),
        op(
            "bn_relu_avgpool_conv1x1_wgrad",
            halved,
            |k, g| {
                k.b.bn_relu_avgpool_conv1x1_wgrad(
                    View::new(&k.i.x, g.a).bn_relu(bn(&k.i, g)),
                    g.shape,
                    View::new(&k.i.dy, g.b),
                    AtMut::new(&mut k.o.out, g.off[0]),
                )
            },
            &[MATS2_AB, BN, SPATIAL, OFFSET, &["b rows disagree"]],
        ),
        op(
            "bn_relu_avgpool_conv1x1_dgrad",
            halved,
            |k, g| {
                let w = At { buf: &k.i.w, offset: g.w };
                let s = sums::<B>(&mut k.o.sums, &mut k.o.short, g);
                k.b.bn_relu_avgpool_conv1x1_dgrad(
                    View::new(&k.i.dy, g.b),
                    w,
                    View::new(&k.i.x, g.a).bn_relu(bn(&k.i, g)),
                    g.shape,
                    ViewMut::new(&mut k.o.out, g.c),
                    s,
                )
            },
            &[
                MATS3,
                BN,
                SPATIAL,
                &[
                    "b rows disagree",
                    "c rows disagree",
                    "c channels disagree",
                    "weight past end",
                    "sums too short",
                ],
            ],
        ),
        op(
            "conv_fwd",
            BASE,
            |k, g| {
                let w = At { buf: &k.i.w, offset: g.w };
                k.b.conv_fwd(View::new(&k.i.x, g.a), g.shape, g.geom, w, ViewMut::new(&mut k.o.out, g.b))
            },
            &[MATS2_AB, SPATIAL, CONV, &["b rows disagree", "weight past end"]],
        ),
        op(
            "conv_wgrad",
            BASE,
            |k, g| {
                k.b.conv_wgrad(
                    View::new(&k.i.x, g.a),
                    g.shape,
                    g.geom,
                    View::new(&k.i.dy, g.b),
                    AtMut::new(&mut k.o.out, g.off[0]),
                )
            },
            &[MATS2_AB, SPATIAL, CONV, OFFSET, &["b rows disagree"]],
        ),
        op(
            "conv_dgrad",
            BASE,
            |k, g| {
                let w = At { buf: &k.i.w, offset: g.w };
                k.b.conv_dgrad(View::new(&k.i.dy, g.b), g.shape, g.geom, w, ViewMut::new(&mut k.o.out, g.c))
            },
            &[
                &["b past end", "c past end", "b pitch < cols", "c pitch < cols"],
                SPATIAL,
                CONV,
                &["b rows disagree", "c rows disagree", "weight past end"],
            ],
        ),
        op(
            "bn_relu_maxpool_fwd",
            pool,
            |k, g| {
                k.b.bn_relu_maxpool_fwd(
                    View::new(&k.i.x, g.a).bn_relu(bn(&k.i, g)),
                    g.shape,
                    ViewMut::new(&mut k.o.out, g.b),
                )
            },
            &[MATS2_AB, BN, SPATIAL, &["b rows disagree", "b channels disagree"]],
        ),
        op(
            "bn_relu_maxpool_bwd",
            pool,
            |k, g| {
                let s = sums::<B>(&mut k.o.sums, &mut k.o.short, g);
                k.b.bn_relu_maxpool_bwd(
                    View::new(&k.i.dy, g.b),
                    View::new(&k.i.x, g.a).bn_relu(bn(&k.i, g)),
                    g.shape,
                    ViewMut::new(&mut k.o.out, g.c),
                    s,
                )
            },
            &[
                MATS3,
                BN,
                SPATIAL,
                &[
                    "b rows disagree",
                    "b channels disagree",
                    "c rows disagree",
                    "c channels disagree",
                    "sums too short",
                ],
            ],
        ),
        op(
            "bn_relu_global_pool_fwd",
            BASE,
            |k, g| {
                let pooled = sums::<B>(&mut k.o.out, &mut k.o.short, g);
                k.b.bn_relu_global_pool_fwd(View::new(&k.i.x, g.a).bn_relu(bn(&k.i, g)), g.shape, pooled)
            },
            &[&["a past end", "a pitch < cols", "a span overflows", "sums too short"], BN, SPATIAL],
        ),
        op(
            "bn_relu_global_pool_bwd",
            BASE,
            |k, g| {
                let s = sums::<B>(&mut k.o.sums, &mut k.o.short, g);
                k.b.bn_relu_global_pool_bwd(
                    &k.i.dy,
                    View::new(&k.i.x, g.a).bn_relu(bn(&k.i, g)),
                    g.shape,
                    ViewMut::new(&mut k.o.out, g.c),
                    s,
                )
            },
            &[MATS2_AC, BN, SPATIAL, &["c rows disagree", "c channels disagree", "sums too short"]],
        ),
        op(
            "linear_fwd",
            Geo { off: [0, 8, 40, 0], ..BASE },
            |k, g| {
                let (w, bias) = (At { buf: &k.i.w, offset: g.w }, At { buf: &k.i.w, offset: g.off[2] });
                k.b.linear_fwd(
                    View::new(&k.i.x, Mat::dense(0, g.n, g.k)),
                    w,
                    bias,
                    ViewMut::new(&mut k.o.out, Mat::dense(0, g.n, g.outs)),
                )
            },
            &[FLAT, &["weight past end", "bias past end"]],
        ),
        op(
            "linear_bwd",
            BASE,
            |k, g| {
                let w = At { buf: &k.i.w, offset: g.w };
                k.b.linear_bwd(
                    View::new(&k.i.dy, Mat::dense(0, g.n, g.outs)),
                    View::new(&k.i.x, Mat::dense(0, g.n, g.k)),
                    w,
                    LinearGrads::new(&mut k.o.out, g.off[0], g.off[1]),
                    ViewMut::new(&mut k.o.corr, Mat::dense(0, g.n, g.k)),
                )
            },
            &[FLAT, OFFSET, &["weight past end", "outputs overlap"]],
        ),
        op(
            "softmax_xent",
            BASE,
            |k, g| {
                k.b.softmax_xent(
                    View::new(&k.i.x, Mat::dense(0, g.n, g.k)),
                    &k.i.dy,
                    &mut k.o.corr,
                    ViewMut::new(&mut k.o.out, Mat::dense(0, g.n, g.k)),
                )
            },
            &[FLAT],
        ),
        op(
            "sgd_update",
            BASE,
            |k, g| k.b.sgd_update(&mut k.o.out, &k.i.x, &mut k.o.corr, g.len, SGD),
            &[&["length past end"]],
        ),
        op(
            "copy_columns",
            BASE,
            |k, g| k.b.copy_columns(View::new(&k.i.x, g.a), ViewMut::new(&mut k.o.out, g.c), true),
            &[MATS2_AC, &["c rows disagree", "c channels disagree"]],
        ),
        op(
            "bn_apply",
            BASE,
            |k, g| k.b.bn_apply(View::new(&k.i.x, g.a), bn(&k.i, g), ViewMut::new(&mut k.o.out, g.c)),
            &[MATS2_AC, BN, &["c rows disagree", "c channels disagree"]],
        ),
        op(
            "relu_fwd",
            BASE,
            |k, g| k.b.relu_fwd(View::new(&k.i.x, g.a), ViewMut::new(&mut k.o.out, g.c)),
            &[MATS2_AC, &["c rows disagree", "c channels disagree"]],
        ),
        op(
            "relu_bwd",
            BASE,
            |k, g| k.b.relu_bwd(ViewMut::new(&mut k.o.out, g.c), View::new(&k.i.x, g.a)),
            &[MATS2_AC, &["c rows disagree", "c channels disagree"]],
        ),
        op(
            "bn_grad_sums",
            BASE,
            |k, g| {
                let s = sums::<B>(&mut k.o.sums, &mut k.o.short, g);
                k.b.bn_grad_sums(View::new(&k.i.dy, g.c), View::new(&k.i.x, g.a), stats(&k.i, g), s)
            },
            &[MATS2_AC, STATS, &["c rows disagree", "c channels disagree", "sums too short"]],
        ),
        op(
            "avg_pool_fwd",
            pool,
            |k, g| {
                k.b.avg_pool_fwd(View::new(&k.i.x, g.a), g.shape, g.window, ViewMut::new(&mut k.o.out, g.b))
            },
            &[MATS2_AB, SPATIAL, &["b rows disagree", "b channels disagree", "window 0"]],
        ),
        op(
            "avg_pool_bwd",
            pool,
            |k, g| {
                k.b.avg_pool_bwd(View::new(&k.i.dy, g.b), g.shape, g.window, ViewMut::new(&mut k.o.out, g.c))
            },
            &[
                &["b past end", "c past end", "b pitch < cols", "c pitch < cols"],
                SPATIAL,
                &["b rows disagree", "b channels disagree", "c rows disagree", "window 0"],
            ],
        ),
        op(
            "max_pool_fwd",
            pool,
            |k, g| k.b.max_pool_fwd(View::new(&k.i.x, g.a), g.shape, ViewMut::new(&mut k.o.out, g.b)),
            &[MATS2_AB, SPATIAL, &["b rows disagree", "b channels disagree"]],
        ),
        op(
            "max_pool_bwd",
            pool,
            |k, g| {
                k.b.max_pool_bwd(
                    View::new(&k.i.dy, g.b),
                    View::new(&k.i.x, g.a),
                    g.shape,
                    ViewMut::new(&mut k.o.out, g.c),
                )
            },
            &[
                MATS3,
                SPATIAL,
                &["b rows disagree", "b channels disagree", "c rows disagree", "c channels disagree"],
            ],
        ),
    ]
}

const SGD: SgdParams = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true };

/// What one backend answered: (op, case, message) of every rejection.
type Rejections = Vec<(&'static str, &'static str, String)>;

/// Runs every op's valid call and its rejections on `backend`; `launched` drains the kernels
/// launched since its last call (always empty off the emulator).
fn contract<B: Backend + UnfusedOps>(backend: B, launched: impl Fn() -> Vec<&'static str>) -> Rejections {
    let mut kit = Kit::new(backend);
    let mut out = Vec::new();
    let ops = ops::<B>();
    for op in &ops {
        if let Err(e) = (op.call)(&mut kit, &op.valid) {
            panic!("{}: the valid call {:?} is rejected: {e}", op.name, op.valid);
        }
        launched();
        for &case in &op.rejects {
            let (_, mutate) = MUTATIONS.iter().find(|(n, _)| *n == case).unwrap_or_else(|| panic!("{case}?"));
            let g = mutate(op.valid);
            match (op.call)(&mut kit, &g) {
                Err(Error::Shape(message)) => out.push((op.name, case, message)),
                other => panic!("{} with {case} ({g:?}): expected a shape error, got {other:?}", op.name),
            }
            assert_eq!(launched(), Vec::<&str>::new(), "{} with {case}: launched before rejecting", op.name);
        }
    }
    println!("{} ops, {} rejection cases on {}", ops.len(), out.len(), kit.b.name());
    out
}

#[test]
fn cpu_backend_keeps_the_op_contract() {
    let rejections = contract(CpuBackend::new(), Vec::new);
    assert!(rejections.len() > 200, "{} cases", rejections.len());
}

/// The emulated kernels reject exactly what the cpu backend rejects, with the same message.
#[cfg(feature = "cuda-emu")]
#[test]
fn emulator_keeps_the_op_contract_as_the_cpu_backend() {
    use densenet::backend::cuda::EmuBackend;
    use densenet::emu;
    emu::set_checks(emu::Checks::all(7));
    emu::take_diagnostics();
    let emulated = contract(EmuBackend::new().unwrap(), emu::take_launches);
    let diagnostics = emu::take_diagnostics();
    assert_eq!(diagnostics.count, 0, "{:#?}", diagnostics.messages);
    assert_eq!(emulated, contract(CpuBackend::new(), Vec::new));
}

/// Random perturbations of every op's valid geometry on the cpu backend: no panic, and every
/// rejection is a shape error.
#[test]
fn cpu_backend_never_panics_on_random_geometry() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xc0de);
    let mut kit = Kit::new(CpuBackend::new());
    let (mut accepted, mut rejected) = (0, 0);
    for op in ops::<CpuBackend>() {
        for _ in 0..2000 {
            let g = perturb(&mut rng, op.valid);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (op.call)(&mut kit, &g)));
            match result {
                Ok(Ok(())) => accepted += 1,
                Ok(Err(Error::Shape(_))) => rejected += 1,
                Ok(Err(e)) => panic!("{} with {g:?}: {e}", op.name),
                Err(_) => panic!("{} panicked with {g:?}", op.name),
            }
        }
    }
    println!("{accepted} accepted, {rejected} rejected");
    assert!(accepted > 10_000 && rejected > 10_000, "{accepted} accepted, {rejected} rejected");
}

/// A value near `v`, or one of the edge values: 0, 1, a buffer length, huge.
fn near(rng: &mut ChaCha8Rng, v: usize) -> usize {
    match rng.random_range(0..10) {
        0 => 0,
        1 => 1,
        2 => [BN_LEN, W_LEN, LEN][rng.random_range(0..3)],
        3 => usize::MAX >> rng.random_range(0..40),
        4..6 => v.saturating_add(rng.random_range(0..4)).saturating_sub(rng.random_range(0..4)),
        _ => v,
    }
}

fn perturb_mat(rng: &mut ChaCha8Rng, m: Mat) -> Mat {
    if rng.random_bool(0.5) {
        return m;
    }
    Mat { offset: near(rng, m.offset), rows: near(rng, m.rows), cols: near(rng, m.cols), ld: near(rng, m.ld) }
}

/// `g` with each field perturbed with some probability: most perturbed calls are invalid, a
/// fair share (sizes that still fit, zero-sized views) valid.
fn perturb(rng: &mut ChaCha8Rng, g: Geo) -> Geo {
    let p = |rng: &mut ChaCha8Rng, v: usize| if rng.random_bool(0.2) { near(rng, v) } else { v };
    let shape = Spatial { n: p(rng, g.shape.n), h: p(rng, g.shape.h), w: p(rng, g.shape.w) };
    Geo {
        a: perturb_mat(rng, g.a),
        b: perturb_mat(rng, g.b),
        c: perturb_mat(rng, g.c),
        shape,
        bn: g.bn.map(|v| p(rng, v)),
        w: p(rng, g.w),
        off: g.off.map(|v| p(rng, v)),
        n: p(rng, g.n),
        k: p(rng, g.k),
        outs: p(rng, g.outs),
        len: p(rng, g.len),
        geom: ConvGeom {
            kernel: p(rng, g.geom.kernel),
            stride: p(rng, g.geom.stride),
            pad: p(rng, g.geom.pad),
        },
        window: PoolWindow { h: p(rng, g.window.h), w: p(rng, g.window.w) },
        short: rng.random_bool(0.1),
    }
}
