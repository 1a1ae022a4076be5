//! The argument contract of every op of every family ([`Backend`](super::Backend) and
//! [`UnfusedOps`](super::UnfusedOps)), checked in one place.
//!
//! Each backend calls the function named after an op first thing in that op, before it
//! touches memory or builds a launch, so the cpu backend, the GPU and the emulator reject
//! exactly the same calls with the same [`Error::Shape`] message, and whatever passes here
//! cannot make a backend index out of a buffer. A function receives the op's arguments as
//! they are (views by reference, other outputs reborrowed shared) and needs only their
//! geometry: buffer lengths through [`BufLen`], [`Mat`]s, [`Spatial`]s, BN references and
//! offsets. All size arithmetic is checked, so an absurd shape is an error rather than an
//! overflow.
//!
//! What this contract covers: every view inside its buffer, pitches no smaller than their
//! columns, matrices that pair up agreeing in rows / columns / pixels, BN statistics and
//! affine parameters present for every channel, convolution and pooling geometry with an
//! output extent, and outputs that do not overlap one another. What it does not: a
//! backend's capacity (the kernels' 32-bit fields, the shared-memory BN table of the 3×3
//! forward, the conv data gradient's k² ≤ 512, the kernel scratch), which that backend
//! checks after these and documents; and values (labels, NaNs).
//!
//! Aliasing: an op's input and output can never be the same buffer object, as Rust does not
//! let a `&` and a `&mut` of one buffer meet in a call. Hence the trait's "dx may be the
//! storage x reads from" cannot happen through this API; what can alias is two output ranges
//! given as offsets into one `&mut` buffer (channel statistics' mean and variance, running
//! mean and variance, dγ and dβ, the correction's α and β, dW and dbias), and those must not
//! overlap: their values would depend on the order a backend writes them in. Ranges inside
//! input buffers may overlap freely (reading is order-independent).

use super::{
    At, AtMut, BnGradTarget, BnRef, BnReluView, BnSums, ConvGeom, Mat, PoolWindow, Spatial, StatsMut,
    StatsRef, View, ViewMut,
};
use crate::Dtype;
use crate::error::{Error, Result};

/// The one property of a buffer the checks need: how many elements it holds.
pub trait BufLen {
    fn len(&self) -> usize;
}

impl BufLen for super::cpu::CpuBuf {
    fn len(&self) -> usize {
        super::cpu::CpuBuf::len(self)
    }
}

impl<D: super::cuda::Device> BufLen for super::cuda::DeviceBuf<D> {
    fn len(&self) -> usize {
        super::cuda::DeviceBuf::len(self)
    }
}

/// `offset..offset + len` must lie inside `buf`.
pub(crate) fn range<B: BufLen + ?Sized>(buf: &B, offset: usize, len: usize, what: &str) -> Result<()> {
    if offset.checked_add(len).is_none_or(|end| end > buf.len()) {
        return Err(Error::Shape(format!(
            "{what}: range {offset}..{} outside a buffer of {} elements",
            offset.saturating_add(len),
            buf.len()
        )));
    }
    Ok(())
}

/// The element types of a kernel backend's op arguments, checked after the op's shape checks
/// (the cpu backend converts per buffer and needs only the f32 ones): every activation argument
/// has the backend's `storage` dtype, the one its kernels `<op>_<storage>` read and write, and
/// every other argument (weights, statistics, parameters, sums, gradients, the head's buffers)
/// is f32. A mismatch would make a kernel read or write the wrong number of bytes per element.
pub(crate) fn dtypes(
    storage: Dtype,
    activations: &[(&str, Dtype)],
    f32_args: &[(&str, Dtype)],
) -> Result<()> {
    if let Some((what, dtype)) = activations.iter().find(|(_, d)| *d != storage) {
        return Err(Error::Shape(format!(
            "{what}: the buffer is {dtype}, but the kernels of this backend take {storage} activations"
        )));
    }
    if let Some((what, dtype)) = f32_args.iter().find(|(_, d)| *d != Dtype::F32) {
        return Err(Error::Shape(format!("{what}: the buffer is {dtype}, but it must be f32")));
    }
    Ok(())
}

/// `factors` multiplied, or an error naming `what` when the product overflows.
fn product(factors: &[usize], what: &str) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |p, &f| p.checked_mul(f))
        .ok_or_else(|| Error::Shape(format!("{what}: size {factors:?} overflows")))
}

/// Every row of `m` must lie inside `buf`, and its rows must not overlap (a pitch at least
/// its columns; a single row needs no pitch). A row of no columns is checked too: the ops
/// compute each row's start `offset + p·ld` whatever its width.
fn mat<B: BufLen>(buf: &B, m: Mat, what: &str) -> Result<()> {
    if m.cols > m.ld && m.rows > 1 {
        return Err(Error::Shape(format!("{what}: {} columns exceed the pitch {}", m.cols, m.ld)));
    }
    let span = match m.rows {
        0 => Some(0),
        rows => (rows - 1).checked_mul(m.ld).and_then(|v| v.checked_add(m.cols)),
    };
    let span = span.ok_or_else(|| Error::Shape(format!("{what}: {m:?} overflows")))?;
    range(buf, m.offset, span, what)
}

/// Two output ranges `(offset, len)` of one buffer (each already inside it, so no sum
/// overflows) must not share an element.
fn disjoint((a, a_len): (usize, usize), (b, b_len): (usize, usize), what: &str) -> Result<()> {
    if a_len > 0 && b_len > 0 && a < b + b_len && b < a + a_len {
        return Err(Error::Shape(format!(
            "{what}: ranges {a}..{} and {b}..{} overlap",
            a + a_len,
            b + b_len
        )));
    }
    Ok(())
}

/// Two matrices with one row per pixel of the same pixels.
fn same_rows(a: Mat, b: Mat, what: &str) -> Result<()> {
    if a.rows != b.rows {
        return Err(Error::Shape(format!("{what}: {} and {} pixel rows", a.rows, b.rows)));
    }
    Ok(())
}

/// Two matrices an op pairs element by element.
fn same_shape(a: Mat, b: Mat, what: &str) -> Result<()> {
    if (a.rows, a.cols) != (b.rows, b.cols) {
        return Err(Error::Shape(format!(
            "{what}: {}x{} and {}x{} matrices",
            a.rows, a.cols, b.rows, b.cols
        )));
    }
    Ok(())
}

/// Two matrices with the same channels (columns).
fn same_channels(a: Mat, b: Mat, what: &str) -> Result<()> {
    if a.cols != b.cols {
        return Err(Error::Shape(format!("{what}: {} and {} channels", a.cols, b.cols)));
    }
    Ok(())
}

/// `m` has one row per pixel of `shape` (ops index rows by pixel).
fn pixels(m: Mat, shape: Spatial, what: &str) -> Result<()> {
    let pixels = product(&[shape.n, shape.h, shape.w], what)?;
    if pixels != m.rows {
        return Err(Error::Shape(format!(
            "{what}: {} rows for {}x{}x{} pixels",
            m.rows, shape.n, shape.h, shape.w
        )));
    }
    Ok(())
}

/// A BN's mean and variance cover `channels`.
fn stats<B: BufLen>(s: StatsRef<'_, B>, channels: usize, what: &str) -> Result<()> {
    range(s.stats, s.mean, channels, &format!("{what} mean"))?;
    range(s.stats, s.var, channels, &format!("{what} variance"))
}

/// A BN's statistics and γ, β cover `channels`.
fn bn<B: BufLen>(bn: BnRef<'_, B>, channels: usize, what: &str) -> Result<()> {
    stats(StatsRef { stats: bn.stats, mean: bn.mean, var: bn.var }, channels, what)?;
    range(bn.params, bn.gamma, channels, &format!("{what} gamma"))?;
    range(bn.params, bn.beta, channels, &format!("{what} beta"))
}

/// The `factors`-float weight at `w`.
fn weight<B: BufLen>(w: At<'_, B>, factors: &[usize], what: &str) -> Result<()> {
    range(w.buf, w.offset, product(factors, what)?, what)
}

/// `2·channels` floats of `[Σg | Σg·x̂]` at the start of `sums`.
fn sums<B: BufLen>(sums: &B, channels: usize, what: &str) -> Result<()> {
    range(sums, 0, product(&[2, channels], what)?, what)
}

/// The output extent of a convolution (or of the stem max-pool, a 3×3/2 pad-1 window): a
/// kernel and stride of at least 1 and padded extents that do not overflow.
fn conv_out(shape: Spatial, geom: ConvGeom, what: &str) -> Result<Spatial> {
    if geom.kernel == 0 || geom.stride == 0 {
        return Err(Error::Shape(format!(
            "{what}: kernel {} and stride {} must be at least 1",
            geom.kernel, geom.stride
        )));
    }
    for size in [shape.h, shape.w] {
        if geom.pad.checked_mul(2).and_then(|p| p.checked_add(size)).is_none() {
            return Err(Error::Shape(format!("{what}: padded extent {size} + 2·{} overflows", geom.pad)));
        }
    }
    Ok(geom.out(shape))
}

/// The stem max-pool's output extent.
fn stem_pool_out(shape: Spatial, what: &str) -> Result<Spatial> {
    conv_out(shape, ConvGeom { kernel: 3, stride: 2, pad: 1 }, what)
}

/// The transition's AvgPool2d(2) output extent (an odd last row or column is dropped).
fn transition_out(shape: Spatial) -> Spatial {
    PoolWindow { h: 2, w: 2 }.out(shape)
}

fn window(w: PoolWindow) -> Result<()> {
    if w.h == 0 || w.w == 0 {
        return Err(Error::Shape(format!("pooling window {}x{} is empty", w.h, w.w)));
    }
    Ok(())
}

// ---- one function per op, named as the op, families in the order of `backend::Backend` ------

pub(crate) fn channel_stats<B: BufLen>(x: &View<'_, B>, out: &StatsMut<'_, B>) -> Result<()> {
    let (x, xm) = (x.buf, x.mat);
    let (out, mean, var) = (&*out.stats, out.mean, out.var);
    mat(x, xm, "channel_stats input")?;
    range(out, mean, xm.cols, "channel_stats mean")?;
    range(out, var, xm.cols, "channel_stats var")?;
    disjoint((mean, xm.cols), (var, xm.cols), "channel_stats mean and var")
}

pub(crate) fn update_running_stats<B: BufLen>(
    batch: StatsRef<'_, B>,
    channels: usize,
    running: &StatsMut<'_, B>,
) -> Result<()> {
    let (running, run_mean, run_var) = (&*running.stats, running.mean, running.var);
    stats(batch, channels, "batch statistics")?;
    range(running, run_mean, channels, "running mean")?;
    range(running, run_var, channels, "running var")?;
    disjoint((run_mean, channels), (run_var, channels), "running mean and var")
}

pub(crate) fn bn_relu_conv1x1_fwd<B: BufLen>(
    x: &BnReluView<'_, B>,
    w: At<'_, B>,
    z: &ViewMut<'_, B>,
) -> Result<()> {
    let (x, xm, bn_ref) = (x.x.buf, x.x.mat, x.bn);
    let (z, zm) = (&*z.buf, z.mat);
    mat(x, xm, "conv1x1 input")?;
    mat(z, zm, "conv1x1 output")?;
    same_rows(xm, zm, "conv1x1")?;
    weight(w, &[zm.cols, xm.cols], "conv1x1 weight")?;
    bn(bn_ref, xm.cols, "conv1x1 statistics")
}

pub(crate) fn bn_relu_conv1x1_wgrad<B: BufLen>(
    x: &BnReluView<'_, B>,
    dz: &View<'_, B>,
    dw: &AtMut<'_, B>,
) -> Result<()> {
    let (x, xm, bn_ref) = (x.x.buf, x.x.mat, x.bn);
    let (dz, dzm) = (dz.buf, dz.mat);
    let (dw, dw_off) = (&*dw.buf, dw.offset);
    mat(x, xm, "conv1x1 wgrad input")?;
    mat(dz, dzm, "conv1x1 wgrad output grad")?;
    same_rows(xm, dzm, "conv1x1 wgrad")?;
    weight(At { buf: dw, offset: dw_off }, &[dzm.cols, xm.cols], "conv1x1 weight grad")?;
    bn(bn_ref, xm.cols, "conv1x1 wgrad statistics")
}

pub(crate) fn bn_relu_conv1x1_dgrad<B: BufLen>(
    dz: &View<'_, B>,
    w: At<'_, B>,
    x: &BnReluView<'_, B>,
    dx: &ViewMut<'_, B>,
    sum_buf: &B,
) -> Result<()> {
    let (dz, dzm) = (dz.buf, dz.mat);
    let (x, xm, bn_ref) = (x.x.buf, x.x.mat, x.bn);
    let (dx, dxm) = (&*dx.buf, dx.mat);
    mat(dz, dzm, "conv1x1 dgrad output grad")?;
    mat(x, xm, "conv1x1 dgrad input")?;
    mat(dx, dxm, "conv1x1 dgrad input grad")?;
    same_rows(dzm, xm, "conv1x1 dgrad")?;
    same_shape(dxm, xm, "conv1x1 dgrad")?;
    weight(w, &[dzm.cols, xm.cols], "conv1x1 weight")?;
    sums(sum_buf, xm.cols, "conv1x1 dgrad sums")?;
    bn(bn_ref, xm.cols, "conv1x1 dgrad statistics")
}

pub(crate) fn bn_relu_conv3x3_fwd<B: BufLen>(
    z: &BnReluView<'_, B>,
    shape: Spatial,
    w: At<'_, B>,
    y: &ViewMut<'_, B>,
) -> Result<()> {
    let (z, zm, bn_ref) = (z.x.buf, z.x.mat, z.bn);
    let (y, ym) = (&*y.buf, y.mat);
    mat(z, zm, "conv3x3 input")?;
    mat(y, ym, "conv3x3 output")?;
    pixels(zm, shape, "conv3x3 input")?;
    pixels(ym, shape, "conv3x3 output")?;
    weight(w, &[ym.cols, 9, zm.cols], "conv3x3 weight")?;
    bn(bn_ref, zm.cols, "conv3x3 batch-norm")
}

pub(crate) fn bn_relu_conv3x3_wgrad<B: BufLen>(
    z: &BnReluView<'_, B>,
    shape: Spatial,
    dy: &View<'_, B>,
    dw: &AtMut<'_, B>,
) -> Result<()> {
    let (z, zm, bn_ref) = (z.x.buf, z.x.mat, z.bn);
    let (dy, dym) = (dy.buf, dy.mat);
    let (dw, dw_off) = (&*dw.buf, dw.offset);
    mat(z, zm, "conv3x3 wgrad input")?;
    mat(dy, dym, "conv3x3 wgrad output grad")?;
    pixels(zm, shape, "conv3x3 wgrad input")?;
    pixels(dym, shape, "conv3x3 wgrad output grad")?;
    weight(At { buf: dw, offset: dw_off }, &[dym.cols, 9, zm.cols], "conv3x3 weight grad")?;
    bn(bn_ref, zm.cols, "conv3x3 wgrad batch-norm")
}

pub(crate) fn bn_relu_conv3x3_dgrad<B: BufLen>(
    dy: &View<'_, B>,
    shape: Spatial,
    w: At<'_, B>,
    z: &BnReluView<'_, B>,
    g: &ViewMut<'_, B>,
    sum_buf: &B,
) -> Result<()> {
    let (dy, dym) = (dy.buf, dy.mat);
    let (z, zm, bn_ref) = (z.x.buf, z.x.mat, z.bn);
    let (g, gm) = (&*g.buf, g.mat);
    mat(dy, dym, "conv3x3 dgrad output grad")?;
    mat(z, zm, "conv3x3 dgrad input")?;
    mat(g, gm, "conv3x3 dgrad input grad")?;
    pixels(dym, shape, "conv3x3 dgrad output grad")?;
    pixels(zm, shape, "conv3x3 dgrad input")?;
    same_shape(gm, zm, "conv3x3 dgrad")?;
    weight(w, &[dym.cols, 9, zm.cols], "conv3x3 weight")?;
    sums(sum_buf, zm.cols, "conv3x3 dgrad sums")?;
    bn(bn_ref, zm.cols, "conv3x3 dgrad batch-norm")
}

pub(crate) fn bn_backward_elementwise<B: BufLen>(
    g: &ViewMut<'_, B>,
    x: &View<'_, B>,
    bn_ref: BnRef<'_, B>,
    sum_buf: &B,
) -> Result<()> {
    let (g, gm) = (&*g.buf, g.mat);
    let (x, xm) = (x.buf, x.mat);
    mat(g, gm, "bn backward gradient")?;
    mat(x, xm, "bn backward input")?;
    same_shape(gm, xm, "bn backward")?;
    sums(sum_buf, xm.cols, "bn backward sums")?;
    bn(bn_ref, xm.cols, "bn backward statistics")
}

pub(crate) fn bn_grad_fold<B: BufLen>(
    bn_sums: &BnSums<'_, B>,
    bn_ref: BnRef<'_, B>,
    grads: &B,
    corr: &B,
    target: BnGradTarget,
) -> Result<()> {
    let (sum_buf, channels) = (bn_sums.sums, bn_sums.channels);
    sums(sum_buf, channels, "bn grad sums")?;
    bn(bn_ref, channels, "bn grad statistics")?;
    range(grads, target.dgamma, channels, "dgamma")?;
    range(grads, target.dbeta, channels, "dbeta")?;
    disjoint((target.dgamma, channels), (target.dbeta, channels), "dgamma and dbeta")?;
    if let Some((alpha, beta)) = target.correction {
        range(corr, alpha, channels, "correction alpha")?;
        range(corr, beta, channels, "correction beta")?;
        disjoint((alpha, channels), (beta, channels), "correction alpha and beta")?;
    }
    Ok(())
}

pub(crate) fn bn_correction<B: BufLen>(
    g: &ViewMut<'_, B>,
    x: &View<'_, B>,
    stats_ref: StatsRef<'_, B>,
    corr: &B,
    alpha: usize,
    beta: usize,
) -> Result<()> {
    let (g, gm) = (&*g.buf, g.mat);
    let (x, xm) = (x.buf, x.mat);
    mat(g, gm, "bn correction gradient")?;
    mat(x, xm, "bn correction input")?;
    same_shape(gm, xm, "bn correction")?;
    stats(stats_ref, xm.cols, "bn correction statistics")?;
    range(corr, alpha, xm.cols, "correction alpha")?;
    range(corr, beta, xm.cols, "correction beta")
}

pub(crate) fn bn_relu_avgpool_conv1x1_fwd<B: BufLen>(
    x: &BnReluView<'_, B>,
    shape: Spatial,
    w: At<'_, B>,
    y: &ViewMut<'_, B>,
) -> Result<()> {
    let (x, xm, bn_ref) = (x.x.buf, x.x.mat, x.bn);
    let (y, ym) = (&*y.buf, y.mat);
    mat(x, xm, "transition input")?;
    mat(y, ym, "transition output")?;
    pixels(xm, shape, "transition input")?;
    pixels(ym, transition_out(shape), "transition output")?;
    weight(w, &[ym.cols, xm.cols], "transition weight")?;
    bn(bn_ref, xm.cols, "transition statistics")
}

pub(crate) fn bn_relu_avgpool_conv1x1_wgrad<B: BufLen>(
    x: &BnReluView<'_, B>,
    shape: Spatial,
    dy: &View<'_, B>,
    dw: &AtMut<'_, B>,
) -> Result<()> {
    let (x, xm, bn_ref) = (x.x.buf, x.x.mat, x.bn);
    let (dy, dym) = (dy.buf, dy.mat);
    let (dw, dw_off) = (&*dw.buf, dw.offset);
    mat(x, xm, "transition wgrad input")?;
    mat(dy, dym, "transition wgrad output grad")?;
    pixels(xm, shape, "transition wgrad input")?;
    pixels(dym, transition_out(shape), "transition wgrad output grad")?;
    weight(At { buf: dw, offset: dw_off }, &[dym.cols, xm.cols], "transition weight grad")?;
    bn(bn_ref, xm.cols, "transition wgrad statistics")
}

pub(crate) fn bn_relu_avgpool_conv1x1_dgrad<B: BufLen>(
    dy: &View<'_, B>,
    w: At<'_, B>,
    x: &BnReluView<'_, B>,
    shape: Spatial,
    dx: &ViewMut<'_, B>,
    sum_buf: &B,
) -> Result<()> {
    let (dy, dym) = (dy.buf, dy.mat);
    let (x, xm, bn_ref) = (x.x.buf, x.x.mat, x.bn);
    let (dx, dxm) = (&*dx.buf, dx.mat);
    mat(dy, dym, "transition dgrad output grad")?;
    mat(x, xm, "transition dgrad input")?;
    mat(dx, dxm, "transition dgrad input grad")?;
    pixels(xm, shape, "transition dgrad input")?;
    pixels(dxm, shape, "transition dgrad input grad")?;
    pixels(dym, transition_out(shape), "transition dgrad output grad")?;
    same_channels(dxm, xm, "transition dgrad")?;
    weight(w, &[dym.cols, xm.cols], "transition weight")?;
    sums(sum_buf, xm.cols, "transition dgrad sums")?;
    bn(bn_ref, xm.cols, "transition dgrad statistics")
}

pub(crate) fn conv_fwd<B: BufLen>(
    x: &View<'_, B>,
    shape: Spatial,
    geom: ConvGeom,
    w: At<'_, B>,
    y: &ViewMut<'_, B>,
) -> Result<()> {
    let (x, xm) = (x.buf, x.mat);
    let (y, ym) = (&*y.buf, y.mat);
    mat(x, xm, "conv input")?;
    mat(y, ym, "conv output")?;
    let out = conv_out(shape, geom, "conv")?;
    pixels(xm, shape, "conv input")?;
    pixels(ym, out, "conv output")?;
    weight(w, &[ym.cols, geom.kernel, geom.kernel, xm.cols], "conv weight")
}

pub(crate) fn conv_wgrad<B: BufLen>(
    x: &View<'_, B>,
    shape: Spatial,
    geom: ConvGeom,
    dy: &View<'_, B>,
    dw: &AtMut<'_, B>,
) -> Result<()> {
    let (x, xm) = (x.buf, x.mat);
    let (dy, dym) = (dy.buf, dy.mat);
    let (dw, dw_off) = (&*dw.buf, dw.offset);
    mat(x, xm, "conv wgrad input")?;
    mat(dy, dym, "conv wgrad output grad")?;
    let out = conv_out(shape, geom, "conv wgrad")?;
    pixels(xm, shape, "conv wgrad input")?;
    pixels(dym, out, "conv wgrad output grad")?;
    let dw = At { buf: dw, offset: dw_off };
    weight(dw, &[dym.cols, geom.kernel, geom.kernel, xm.cols], "conv weight grad")
}

pub(crate) fn conv_dgrad<B: BufLen>(
    dy: &View<'_, B>,
    shape: Spatial,
    geom: ConvGeom,
    w: At<'_, B>,
    dx: &ViewMut<'_, B>,
) -> Result<()> {
    let (dy, dym) = (dy.buf, dy.mat);
    let (dx, dxm) = (&*dx.buf, dx.mat);
    mat(dy, dym, "conv dgrad output grad")?;
    mat(dx, dxm, "conv dgrad input grad")?;
    let out = conv_out(shape, geom, "conv dgrad")?;
    pixels(dym, out, "conv dgrad output grad")?;
    pixels(dxm, shape, "conv dgrad input grad")?;
    weight(w, &[dym.cols, geom.kernel, geom.kernel, dxm.cols], "conv weight")
}

pub(crate) fn bn_relu_maxpool_fwd<B: BufLen>(
    t: &BnReluView<'_, B>,
    shape: Spatial,
    y: &ViewMut<'_, B>,
) -> Result<()> {
    let (t, tm, bn_ref) = (t.x.buf, t.x.mat, t.bn);
    let (y, ym) = (&*y.buf, y.mat);
    mat(t, tm, "maxpool input")?;
    mat(y, ym, "maxpool output")?;
    pixels(tm, shape, "maxpool input")?;
    pixels(ym, stem_pool_out(shape, "maxpool")?, "maxpool output")?;
    same_channels(tm, ym, "maxpool")?;
    bn(bn_ref, tm.cols, "maxpool statistics")
}

pub(crate) fn bn_relu_maxpool_bwd<B: BufLen>(
    dy: &View<'_, B>,
    t: &BnReluView<'_, B>,
    shape: Spatial,
    g: &ViewMut<'_, B>,
    sum_buf: &B,
) -> Result<()> {
    let (dy, dym) = (dy.buf, dy.mat);
    let (t, tm, bn_ref) = (t.x.buf, t.x.mat, t.bn);
    let (g, gm) = (&*g.buf, g.mat);
    mat(dy, dym, "maxpool output grad")?;
    mat(t, tm, "maxpool input")?;
    mat(g, gm, "maxpool input grad")?;
    pixels(tm, shape, "maxpool input")?;
    pixels(dym, stem_pool_out(shape, "maxpool backward")?, "maxpool output grad")?;
    same_channels(tm, dym, "maxpool backward")?;
    same_shape(gm, tm, "maxpool backward")?;
    sums(sum_buf, tm.cols, "maxpool sums")?;
    bn(bn_ref, tm.cols, "maxpool statistics")
}

pub(crate) fn bn_relu_global_pool_fwd<B: BufLen>(
    x: &BnReluView<'_, B>,
    shape: Spatial,
    pooled: &B,
) -> Result<()> {
    let (x, xm, bn_ref) = (x.x.buf, x.x.mat, x.bn);
    mat(x, xm, "global pool input")?;
    pixels(xm, shape, "global pool input")?;
    range(pooled, 0, product(&[shape.n, xm.cols], "pooled features")?, "pooled features")?;
    bn(bn_ref, xm.cols, "global pool statistics")
}

pub(crate) fn bn_relu_global_pool_bwd<B: BufLen>(
    dpooled: &B,
    x: &BnReluView<'_, B>,
    shape: Spatial,
    dx: &ViewMut<'_, B>,
    sum_buf: &B,
) -> Result<()> {
    let (x, xm, bn_ref) = (x.x.buf, x.x.mat, x.bn);
    let (dx, dxm) = (&*dx.buf, dx.mat);
    range(dpooled, 0, product(&[shape.n, xm.cols], "pooled gradient")?, "pooled gradient")?;
    mat(x, xm, "global pool input")?;
    mat(dx, dxm, "global pool input grad")?;
    pixels(xm, shape, "global pool input")?;
    same_shape(dxm, xm, "global pool backward")?;
    sums(sum_buf, xm.cols, "global pool sums")?;
    bn(bn_ref, xm.cols, "global pool statistics")
}

/// The head's matrices are dense and start at their buffer's first float: its kernels take a
/// bare pointer and a row count.
fn head_mat<B: BufLen>(v: View<'_, B>, what: &str) -> Result<()> {
    if v.mat.offset != 0 || (v.mat.ld != v.mat.cols && v.mat.rows > 1) {
        return Err(Error::Shape(format!(
            "{what}: the head takes dense matrices at the start of their buffer, not {:?}",
            v.mat
        )));
    }
    mat(v.buf, v.mat, what)
}

/// Returns the batch, input features and output features.
pub(crate) fn linear_fwd<B: BufLen>(
    x: View<'_, B>,
    w: At<'_, B>,
    bias: At<'_, B>,
    y: View<'_, B>,
) -> Result<(usize, usize, usize)> {
    head_mat(x, "linear input")?;
    head_mat(y, "linear output")?;
    same_rows(x.mat, y.mat, "linear input and output")?;
    let (n, k, out) = (x.mat.rows, x.mat.cols, y.mat.cols);
    weight(w, &[out, k], "linear weight")?;
    range(bias.buf, bias.offset, out, "linear bias")?;
    Ok((n, k, out))
}

/// Returns the batch, input features and output features.
pub(crate) fn linear_bwd<B: BufLen>(
    dy: View<'_, B>,
    x: View<'_, B>,
    w: At<'_, B>,
    grads: &B,
    dw_off: usize,
    dbias_off: usize,
    dx: View<'_, B>,
) -> Result<(usize, usize, usize)> {
    head_mat(dy, "linear output grad")?;
    head_mat(x, "linear input")?;
    head_mat(dx, "linear input grad")?;
    same_rows(dy.mat, x.mat, "linear output grad and input")?;
    same_shape(dx.mat, x.mat, "linear input grad and input")?;
    let (n, k, out) = (x.mat.rows, x.mat.cols, dy.mat.cols);
    weight(w, &[out, k], "linear weight")?;
    let dw_len = product(&[out, k], "linear weight grad")?;
    range(grads, dw_off, dw_len, "linear weight grad")?;
    range(grads, dbias_off, out, "linear bias grad")?;
    disjoint((dw_off, dw_len), (dbias_off, out), "linear weight and bias grads")?;
    Ok((n, k, out))
}

/// Returns the batch and the classes.
pub(crate) fn softmax_xent<B: BufLen>(
    logits: View<'_, B>,
    labels: &B,
    loss: &B,
    dlogits: View<'_, B>,
) -> Result<(usize, usize)> {
    head_mat(logits, "logits")?;
    head_mat(dlogits, "logit grad")?;
    same_shape(dlogits.mat, logits.mat, "logit grad and logits")?;
    range(labels, 0, logits.mat.rows, "labels")?;
    range(loss, 0, 1, "loss")?;
    Ok((logits.mat.rows, logits.mat.cols))
}

pub(crate) fn sgd_update<B: BufLen>(params: &B, grads: &B, velocity: &B, len: usize) -> Result<()> {
    range(params, 0, len, "parameters")?;
    range(grads, 0, len, "gradients")?;
    range(velocity, 0, len, "velocity")
}

pub(crate) fn copy_columns<B: BufLen>(src: &View<'_, B>, dst: &ViewMut<'_, B>) -> Result<()> {
    let (src, sm) = (src.buf, src.mat);
    let (dst, dm) = (&*dst.buf, dst.mat);
    mat(src, sm, "copy_columns source")?;
    mat(dst, dm, "copy_columns destination")?;
    same_shape(sm, dm, "copy_columns")
}

pub(crate) fn bn_apply<B: BufLen>(x: &View<'_, B>, bn_ref: BnRef<'_, B>, y: &ViewMut<'_, B>) -> Result<()> {
    let (x, xm) = (x.buf, x.mat);
    let (y, ym) = (&*y.buf, y.mat);
    mat(x, xm, "bn_apply input")?;
    mat(y, ym, "bn_apply output")?;
    same_shape(xm, ym, "bn_apply")?;
    bn(bn_ref, xm.cols, "bn_apply")
}

pub(crate) fn relu_fwd<B: BufLen>(x: &View<'_, B>, y: &ViewMut<'_, B>) -> Result<()> {
    let (x, xm) = (x.buf, x.mat);
    let (y, ym) = (&*y.buf, y.mat);
    mat(x, xm, "relu input")?;
    mat(y, ym, "relu output")?;
    same_shape(xm, ym, "relu")
}

pub(crate) fn relu_bwd<B: BufLen>(g: &ViewMut<'_, B>, x: &View<'_, B>) -> Result<()> {
    let (g, gm) = (&*g.buf, g.mat);
    let (x, xm) = (x.buf, x.mat);
    mat(g, gm, "relu backward gradient")?;
    mat(x, xm, "relu backward input")?;
    same_shape(gm, xm, "relu backward")
}

pub(crate) fn bn_grad_sums<B: BufLen>(
    g: &View<'_, B>,
    x: &View<'_, B>,
    stats_ref: StatsRef<'_, B>,
    sum_buf: &B,
) -> Result<()> {
    let (g, gm) = (g.buf, g.mat);
    let (x, xm) = (x.buf, x.mat);
    mat(g, gm, "bn_grad_sums gradient")?;
    mat(x, xm, "bn_grad_sums input")?;
    same_shape(gm, xm, "bn_grad_sums")?;
    stats(stats_ref, xm.cols, "bn_grad_sums")?;
    sums(sum_buf, xm.cols, "bn_grad_sums sums")
}

pub(crate) fn avg_pool_fwd<B: BufLen>(
    x: &View<'_, B>,
    shape: Spatial,
    win: PoolWindow,
    y: &ViewMut<'_, B>,
) -> Result<()> {
    let (x, xm) = (x.buf, x.mat);
    let (y, ym) = (&*y.buf, y.mat);
    window(win)?;
    mat(x, xm, "avg_pool input")?;
    mat(y, ym, "avg_pool output")?;
    pixels(xm, shape, "avg_pool input")?;
    pixels(ym, win.out(shape), "avg_pool output")?;
    same_channels(xm, ym, "avg_pool")
}

pub(crate) fn avg_pool_bwd<B: BufLen>(
    dy: &View<'_, B>,
    shape: Spatial,
    win: PoolWindow,
    dx: &ViewMut<'_, B>,
) -> Result<()> {
    let (dy, dym) = (dy.buf, dy.mat);
    let (dx, dxm) = (&*dx.buf, dx.mat);
    window(win)?;
    mat(dy, dym, "avg_pool output grad")?;
    mat(dx, dxm, "avg_pool input grad")?;
    pixels(dxm, shape, "avg_pool input grad")?;
    pixels(dym, win.out(shape), "avg_pool output grad")?;
    same_channels(dxm, dym, "avg_pool")
}

pub(crate) fn max_pool_fwd<B: BufLen>(x: &View<'_, B>, shape: Spatial, y: &ViewMut<'_, B>) -> Result<()> {
    let (x, xm) = (x.buf, x.mat);
    let (y, ym) = (&*y.buf, y.mat);
    mat(x, xm, "max_pool input")?;
    mat(y, ym, "max_pool output")?;
    pixels(xm, shape, "max_pool input")?;
    pixels(ym, stem_pool_out(shape, "max_pool")?, "max_pool output")?;
    same_channels(xm, ym, "max_pool")
}

pub(crate) fn max_pool_bwd<B: BufLen>(
    dy: &View<'_, B>,
    x: &View<'_, B>,
    shape: Spatial,
    dx: &ViewMut<'_, B>,
) -> Result<()> {
    let (dy, dym) = (dy.buf, dy.mat);
    let (x, xm) = (x.buf, x.mat);
    let (dx, dxm) = (&*dx.buf, dx.mat);
    mat(dy, dym, "max_pool output grad")?;
    mat(x, xm, "max_pool input")?;
    mat(dx, dxm, "max_pool input grad")?;
    pixels(xm, shape, "max_pool input")?;
    same_shape(xm, dxm, "max_pool input grad")?;
    pixels(dym, stem_pool_out(shape, "max_pool backward")?, "max_pool output grad")?;
    same_channels(xm, dym, "max_pool")
}
