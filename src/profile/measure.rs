//! Real runs: one step of a path on a backend, with the allocator's peak and the wall time.

use super::{ConfigProfile, Measured, PathKind};
use crate::backend::UnfusedOps;
use crate::backend::{Backend, Category, MemoryReport, SgdParams};
use crate::baseline::BaselineNetwork;
use crate::efficient::{Network, Options};
use crate::error::Result;
use crate::params::ParamLayout;
use crate::verify::{nchw_to_nhwc, random_batch};
use std::time::Instant;

/// The paper's optimiser settings; the values do not change what is allocated.
const SGD: SgdParams = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true };

/// Runs `steps` steps of `path` for `profile`'s configuration on `backend` with
/// torchvision-style initial weights and a random batch (after one untimed warm-up step when
/// `steps > 1`), and returns the allocator's peak from the network's construction to the end
/// of the last step (bytes the backend held before are not counted) and the median step time.
pub fn measure<B: Backend + UnfusedOps>(
    backend: B,
    profile: &ConfigProfile,
    path: PathKind,
    steps: usize,
) -> Result<Measured> {
    let (cfg, n, h, w) = (&profile.config, profile.batch, profile.height, profile.width);
    let layout = ParamLayout::new(cfg);
    let (params, running) = (layout.init(0), layout.init_running());
    let (images, labels) = random_batch(cfg, n, h, w, 0);
    let images = nchw_to_nhwc(&images, n, cfg.in_channels, h, w);
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();

    backend.reset_peak();
    let before = backend.memory();
    let train = path != PathKind::EfficientInference;
    let labels: &[u32] = if train { &labels } else { &[] };
    let (report, seconds) = match path {
        PathKind::EfficientTraining => {
            let net = Network::new(backend, cfg, n, h, w, Options::train().with_optimizer())?;
            run_steps(net, &params, &running, &images, labels, train, steps)?
        }
        PathKind::EfficientInference => {
            let net = Network::new(backend, cfg, n, h, w, Options::eval())?;
            run_steps(net, &params, &running, &images, labels, train, steps)?
        }
        PathKind::BaselineTraining => {
            let net = BaselineNetwork::new(backend, cfg, n, h, w, true)?;
            run_steps(net, &params, &running, &images, labels, train, steps)?
        }
    };
    Ok(Measured {
        peak_bytes: report.peak.saturating_sub(before.current),
        peak_by_category: by_category(&report, &before),
        seconds,
        steps,
    })
}

/// What the step loop calls on a network: the inherent methods of the same names that both
/// kinds have, so that one loop measures both.
trait StepNet<B: Backend + UnfusedOps> {
    fn set_params(&mut self, params: &[f32], running: &[f32]) -> Result<()>;
    fn set_batch(&mut self, images: &[f32], labels: &[u32]) -> Result<()>;
    fn forward(&mut self) -> Result<()>;
    fn backward(&mut self) -> Result<()>;
    fn sgd_step(&mut self, hp: SgdParams) -> Result<()>;
    fn backend(&self) -> &B;
}

/// Implements [`StepNet`] for a network type by forwarding to its inherent methods (which
/// method-call syntax picks before the trait's, so these do not recurse).
macro_rules! step_net {
    ($net:ident) => {
        impl<B: Backend + UnfusedOps> StepNet<B> for $net<B> {
            fn set_params(&mut self, params: &[f32], running: &[f32]) -> Result<()> {
                self.set_params(params, running)
            }
            fn set_batch(&mut self, images: &[f32], labels: &[u32]) -> Result<()> {
                self.set_batch(images, labels)
            }
            fn forward(&mut self) -> Result<()> {
                self.forward()
            }
            fn backward(&mut self) -> Result<()> {
                self.backward()
            }
            fn sgd_step(&mut self, hp: SgdParams) -> Result<()> {
                self.sgd_step(hp)
            }
            fn backend(&self) -> &B {
                self.backend()
            }
        }
    };
}
step_net!(Network);
step_net!(BaselineNetwork);

/// Loads `params`, `running` and the batch into `net`, then times `steps` steps (a forward,
/// and with `train` a backward and an SGD step); returns the backend's memory report after
/// the last one and the median step time.
fn run_steps<B: Backend + UnfusedOps>(
    mut net: impl StepNet<B>,
    params: &[f32],
    running: &[f32],
    images: &[f32],
    labels: &[u32],
    train: bool,
    steps: usize,
) -> Result<(MemoryReport, f64)> {
    net.set_params(params, running)?;
    net.set_batch(images, labels)?;
    let seconds = median_seconds(steps, || {
        net.forward()?;
        if train {
            net.backward()?;
            net.sgd_step(SGD)?;
        }
        net.backend().synchronize()
    })?;
    Ok((net.backend().memory(), seconds))
}

/// Median wall time of `steps` calls of `step` (each ends by synchronising the backend). With
/// more than one, an untimed call comes first, so one-time costs (a GPU loading its kernels)
/// stay out of the median.
fn median_seconds(steps: usize, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    if steps > 1 {
        step()?;
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps.max(1) {
        let start = Instant::now();
        step()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let mid = times.len() / 2;
    Ok(if times.len() % 2 == 0 { (times[mid - 1] + times[mid]) / 2.0 } else { times[mid] })
}

/// Bytes per category at the peak, less what each category held before.
fn by_category(report: &MemoryReport, before: &MemoryReport) -> super::CategoryBytes {
    Category::ALL
        .iter()
        .map(|&c| (c, report.peak_category(c).saturating_sub(before.category(c))))
        .filter(|(_, b)| *b > 0)
        .collect()
}
