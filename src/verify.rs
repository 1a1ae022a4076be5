//! Verification of the efficient path against the f64 oracle: one training step's forward and
//! backward on random weights and inputs, compared output by output.

use crate::Precision;
use crate::backend::memory::ensure_host_fits;
use crate::backend::{Backend, bn_affine};
use crate::config::DenseNetConfig;
use crate::efficient::{BnInput, Network, Options};
use crate::error::Result;
use crate::params::{BnSite, ParamLayout};
use crate::plan::{BaselinePlan, Dtype, product, sum};
use crate::reference::{self, KinkResolver};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

/// Tolerance on the relative error of an fp32 backend against the f64 oracle.
pub const F32_TOLERANCE: f64 = 1e-4;

/// Tolerance of a tf32 backend. One training step's gradients amplify the per-op rounding
/// error by the network's condition, the same at either precision: on random weights at batch
/// 2, DenseNet-BC-100 measures 4.2e-6 = 70 u in fp32 (u = 2⁻²⁴) and 5e-2 = 100 u in tf32 (whose
/// GEMM operands carry u = 2⁻¹¹); densenet121 at 64×64, 3.7e-5 = 600 u and 0.165 = 340 u. The
/// tolerance is 600 u of tf32, 0.3. The forward outputs (logits, loss) stay within ~4e-4, and
/// a wrong kernel (a misplaced fragment, a lost tile) is off by O(1); the tight checks of
/// each tf32 kernel against the same rounded products are in the kernel tests.
pub const TF32_TOLERANCE: f64 = 3e-1;

/// Half-width of the band around a ReLU or max-pool kink in which the oracle follows the
/// backend's decision. fp32 activations deviate from f64 by ~1e-6 after a hundred layers; the
/// band is a hundred times wider, and still so narrow that a wrong mask elsewhere shows.
pub const KINK_MARGIN: f64 = 1e-4;

/// The band for tf32, whose activations deviate by ~1e-4 after a hundred layers: again a
/// hundred times that.
pub const TF32_KINK_MARGIN: f64 = 1e-2;

/// Tolerance of a bf16 backend. Stored activations and gradients carry u = 2⁻⁸ each, and the
/// same amplification applies: DenseNet-BC-100 measures 0.12–0.14 (≈ 35 u) at batches 2 to 16,
/// densenet121 at 64×64 batch 2 0.60–0.62 (≈ 155 u). The tf32 rule, 600 u, would be 2.3 —
/// beyond the ≈ 1.4 of an unrelated result — so the tolerance is capped at 1: this check
/// catches a broken pipeline only. Each bf16 kernel is held to 2⁻⁸ (one bf16 rounding flip
/// in a small fraction of its outputs; measured at most 4e-5) against the cpu backend fed
/// the same bf16 values in the kernel tests, and bf16 training to fp32 training's accuracy.
pub const BF16_TOLERANCE: f64 = 1.0;

/// The band for bf16, whose stored activations are rounded by 2⁻⁹ relative and deviate by
/// ~1e-3 after a hundred layers: a hundred times that. (A band of 1e-2 leaves BC-100's error
/// at 0.46, dominated by ReLU decisions flipped within it.)
pub const BF16_KINK_MARGIN: f64 = 1e-1;

/// The tolerance [`verify`] holds a backend computing in `precision` to.
pub fn tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::Fp32 => F32_TOLERANCE,
        Precision::Tf32 => TF32_TOLERANCE,
        Precision::Bf16 => BF16_TOLERANCE,
    }
}

/// The kink band of a backend computing in `precision`.
pub fn kink_margin(precision: Precision) -> f64 {
    match precision {
        Precision::Fp32 => KINK_MARGIN,
        Precision::Tf32 => TF32_KINK_MARGIN,
        Precision::Bf16 => BF16_KINK_MARGIN,
    }
}

/// One compared quantity.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub name: String,
    /// ‖a − b‖ / ‖b‖ (or ‖a‖ when b = 0).
    pub rel_error: f64,
}

/// Everything `verify` compared, and the largest error.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub backend: String,
    /// The backend's precision, and the tolerance and kink band that go with it.
    pub precision: Precision,
    pub tolerance: f64,
    pub kink_margin: f64,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub seed: u64,
    pub loss: f64,
    /// ReLU and max-pool decisions within [`KINK_MARGIN`] of their kink, which the oracle
    /// took as the backend did (see [`KinkResolver`]).
    pub kink_decisions: usize,
    /// Wall time of the efficient path (both networks' construction, the training step, the
    /// eval forward, the downloads) and of the oracle (training step with the kink look-ups,
    /// eval forward): the oracle is f64 on the CPU and dominates next to a GPU.
    pub backend_seconds: f64,
    pub oracle_seconds: f64,
    pub comparisons: Vec<Comparison>,
    pub max_rel_error: f64,
}

impl VerifyReport {
    /// Whether every comparison is within the precision's tolerance.
    pub fn passed(&self) -> bool {
        self.max_rel_error.is_finite() && self.max_rel_error <= self.tolerance
    }
}

/// Relative error ‖a − b‖ / ‖b‖ in f64 (absolute when b is all zero).
pub fn rel_error(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared tensors must have equal length");
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        diff += (x as f64 - y).powi(2);
        norm += y * y;
    }
    if norm == 0.0 { diff.sqrt() } else { (diff / norm).sqrt() }
}

/// Random test inputs: NCHW images (standard normal) and labels.
pub fn random_batch(cfg: &DenseNetConfig, n: usize, h: usize, w: usize, seed: u64) -> (Vec<f64>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1));
    let images = (0..n * cfg.in_channels * h * w).map(|_| StandardNormal.sample(&mut rng)).collect();
    let labels = (0..n).map(|_| rng.random_range(0..cfg.classes)).collect();
    (images, labels)
}

/// NCHW → NHWC (f64 → f32).
pub fn nchw_to_nhwc(x: &[f64], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for i in 0..n {
        for ch in 0..c {
            for p in 0..h * w {
                out[(i * h * w + p) * c + ch] = x[(i * c + ch) * h * w + p] as f32;
            }
        }
    }
    out
}

/// NHWC → NCHW.
pub fn nhwc_to_nchw(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for i in 0..n {
        for ch in 0..c {
            for p in 0..h * w {
                out[(i * c + ch) * h * w + p] = x[(i * h * w + p) * c + ch];
            }
        }
    }
    out
}

/// The inputs and the efficient path's outputs of `verify`'s training step (for writing them
/// out, e.g. `densenet verify --dump`).
#[derive(Clone, Debug)]
pub struct Step {
    /// Parameters and running statistics before the step (`ParamLayout` order).
    pub params: Vec<f32>,
    pub running: Vec<f32>,
    /// The batch, NCHW, and its labels.
    pub images: Vec<f64>,
    pub labels: Vec<usize>,
    pub logits: Vec<f32>,
    pub loss: f32,
    pub grads: Vec<f32>,
    /// dL/d(images), NCHW.
    pub input_grad: Vec<f32>,
    /// Running statistics after the step.
    pub running_after: Vec<f32>,
}

/// Runs one training step (and an eval forward) through the efficient path on `backend` and
/// through the oracle, with random weights (γ, β and running statistics random too) and
/// inputs drawn from `seed`, and compares logits, loss, every parameter group's gradient, the
/// input gradient, the updated running statistics and the eval-mode logits.
pub fn verify<B: Backend + Clone>(
    backend: &B,
    cfg: &DenseNetConfig,
    batch: usize,
    height: usize,
    width: usize,
    seed: u64,
) -> Result<VerifyReport> {
    verify_with_step(backend, cfg, batch, height, width, seed).map(|(report, _)| report)
}

/// Refuses a verification whose host-side buffers cannot fit, before any is allocated: the
/// batch (f64 NCHW, f32 NHWC, the input gradient), the parameter copies (f32 weights,
/// gradients and running statistics; f64 weights and gradients) and the f64 oracle, a textbook
/// network that holds what the baseline's plan holds, at twice the bytes. (The
/// efficient path's device memory is checked by `Network::new`.) The plan also validates the
/// configuration, the image and the batch with their own messages.
fn check_host_memory(cfg: &DenseNetConfig, batch: usize, height: usize, width: usize) -> Result<()> {
    let baseline = BaselinePlan::new(cfg, batch, height, width, Dtype::F32, false)?;
    let input = product("the input batch", &[batch, cfg.in_channels, height, width])?;
    let params = ParamLayout::new(cfg).num_params;
    let needed = [
        product("the oracle", &[baseline.peak_bytes, 2])?,
        product("the batch", &[input, 8 + 4 + 4])?,
        product("the parameter copies", &[params, 4 * 3 + 8 * 2])?,
    ]
    .into_iter()
    .try_fold(0, |t, b| sum("verify's host memory", t, b))?;
    ensure_host_fits("verify's batch, parameter copies and f64 oracle", needed)
}

/// [`verify`], also returning the step it checked.
pub fn verify_with_step<B: Backend + Clone>(
    backend: &B,
    cfg: &DenseNetConfig,
    batch: usize,
    height: usize,
    width: usize,
    seed: u64,
) -> Result<(VerifyReport, Step)> {
    check_host_memory(cfg, batch, height, width)?;
    let layout = ParamLayout::new(cfg);
    let (params, running) = layout.init_random(seed);
    let (images, labels) = random_batch(cfg, batch, height, width, seed);
    let images_nhwc = nchw_to_nhwc(&images, batch, cfg.in_channels, height, width);
    let labels_u32: Vec<u32> = labels.iter().map(|&l| l as u32).collect();

    // Efficient path: training step.
    let started = Instant::now();
    let opts = Options { input_grad: true, ..Options::train() };
    let mut net = Network::new(backend.clone(), cfg, batch, height, width, opts)?;
    net.set_params(&params, &running)?;
    net.set_batch(&images_nhwc, &labels_u32)?;
    net.forward()?;
    net.backward()?;
    let logits = net.logits()?;
    let loss = net.loss()?;
    let grads = net.grads()?;
    let input_grad = nhwc_to_nchw(&net.input_grad()?, batch, cfg.in_channels, height, width);
    let running_after = net.running()?;
    let kinks = BackendDecisions::new(&mut net, &params);

    // Efficient path: eval forward with the initial running statistics.
    let mut eval = Network::new(backend.clone(), cfg, batch, height, width, Options::eval())?;
    eval.set_params(&params, &running)?;
    eval.set_batch(&images_nhwc, &[])?;
    eval.forward()?;
    let eval_logits = eval.logits()?;
    drop(eval);
    let backend_seconds = started.elapsed().as_secs_f64();

    // Oracle.
    let started = Instant::now();
    let p64: Vec<f64> = params.iter().map(|&v| v as f64).collect();
    let r64: Vec<f64> = running.iter().map(|&v| v as f64).collect();
    let nb = reference::Batch { images: &images, labels: &labels, n: batch, h: height, w: width };
    let (oracle, kink_decisions) =
        reference::train_step_resolved(cfg, &layout, &p64, &r64, &nb, Some(&kinks))?;
    kinks.finish()?;
    let oracle_eval = reference::eval_logits(cfg, &layout, &p64, &r64, &nb)?;
    let oracle_seconds = started.elapsed().as_secs_f64();

    let mut comparisons = vec![
        Comparison { name: "logits".into(), rel_error: rel_error(&logits, &oracle.logits) },
        Comparison { name: "loss".into(), rel_error: rel_error(&[loss], &[oracle.loss]) },
    ];
    for group in layout.groups() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for t in layout.tensors.iter().filter(|t| t.group == group) {
            a.extend_from_slice(&grads[t.offset..t.offset + t.len]);
            b.extend_from_slice(&oracle.grads[t.offset..t.offset + t.len]);
        }
        comparisons.push(Comparison { name: format!("grad {group}"), rel_error: rel_error(&a, &b) });
    }
    comparisons.push(Comparison {
        name: "grad input".into(),
        rel_error: rel_error(&input_grad, &oracle.input_grad),
    });
    comparisons.push(Comparison {
        name: "running statistics".into(),
        rel_error: rel_error(&running_after, &oracle.running),
    });
    comparisons
        .push(Comparison { name: "eval logits".into(), rel_error: rel_error(&eval_logits, &oracle_eval) });
    // NaN must not hide behind `f64::max`, which ignores it.
    let max_rel_error = comparisons
        .iter()
        .map(|c| c.rel_error)
        .fold(0.0, |m: f64, e| if e.is_nan() || m.is_nan() { f64::NAN } else { m.max(e) });
    let precision = backend.precision();
    let report = VerifyReport {
        backend: backend.name(),
        precision,
        tolerance: tolerance(precision),
        kink_margin: kink_margin(precision),
        batch,
        height,
        width,
        seed,
        loss: oracle.loss,
        kink_decisions,
        backend_seconds,
        oracle_seconds,
        comparisons,
        max_rel_error,
    };
    let step = Step { params, running, images, labels, logits, loss, grads, input_grad, running_after };
    Ok((report, step))
}

/// A BN input and the affine `a·x + b` the backend applied to it.
struct SiteInput {
    input: BnInput,
    a: Vec<f32>,
    b: Vec<f32>,
}

/// The backend's own ReLU and max-pool decisions, read back from the network's stored (or
/// recomputed) BN inputs and evaluated with the same f32 formula the backend uses.
struct BackendDecisions<'n, B: Backend> {
    net: RefCell<&'n mut Network<B>>,
    params: &'n [f32],
    /// BN inputs with their per-channel affine, loaded on first use.
    sites: RefCell<HashMap<BnSite, SiteInput>>,
    /// The first download error, reported after the oracle finishes (the trait cannot fail).
    error: RefCell<Option<crate::Error>>,
}

impl<'n, B: Backend> BackendDecisions<'n, B> {
    fn new(net: &'n mut Network<B>, params: &'n [f32]) -> Self {
        BackendDecisions {
            net: RefCell::new(net),
            params,
            sites: RefCell::default(),
            error: RefCell::default(),
        }
    }

    fn finish(self) -> Result<()> {
        self.error.into_inner().map_or(Ok(()), Err)
    }

    /// The backend's pre-activation a·x + b at `[n, c, y, x]` of the BN at `site`, or `None`
    /// if it could not be read (the error is kept for `finish`).
    fn preactivation(&self, site: BnSite, [n, c, y, x]: [usize; 4]) -> Option<f32> {
        let mut sites = self.sites.borrow_mut();
        let s = match sites.entry(site) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut net = self.net.borrow_mut();
                let norm = net.layout().bn(site)?;
                match net.bn_input(site) {
                    Ok(input) => {
                        let p = self.params;
                        let gamma = &p[norm.gamma..norm.gamma + norm.channels];
                        let beta = &p[norm.beta..norm.beta + norm.channels];
                        let (a, b) = bn_affine(gamma, beta, &input.mean, &input.var);
                        e.insert(SiteInput { input, a, b })
                    }
                    Err(err) => {
                        self.error.borrow_mut().get_or_insert(err);
                        return None;
                    }
                }
            }
        };
        let p = (n * s.input.height + y) * s.input.width + x;
        Some(s.a[c] * s.input.values[p * s.input.pitch + c] + s.b[c])
    }
}

impl<B: Backend> KinkResolver for BackendDecisions<'_, B> {
    fn margin(&self) -> f64 {
        kink_margin(self.net.borrow().backend().precision())
    }

    fn relu_passes(&self, site: BnSite, at: [usize; 4], v: f64) -> bool {
        self.preactivation(site, at).map_or(v > 0.0, |v32| v32 > 0.0)
    }

    fn maxpool_pick(&self, candidates: &[[usize; 4]]) -> usize {
        // The backend takes the first maximum of relu(a·t + b) in window order.
        let mut best = (0, f32::NEG_INFINITY);
        for (i, &at) in candidates.iter().enumerate() {
            let v = self.preactivation(BnSite::Norm0, at).unwrap_or(0.0).max(0.0);
            if v > best.1 {
                best = (i, v);
            }
        }
        best.0
    }
}
