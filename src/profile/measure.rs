//! Real runs: one step of a path on a backend, with the allocator's peak and the wall time.

use super::{ConfigProfile, Measured, PathKind};
use crate::backend::{Backend, Category, MemoryReport, SgdParams};
use crate::baseline::NaiveNetwork;
use crate::efficient::{Network, Options};
use crate::error::Result;
use crate::params::ParamLayout;
use crate::verify::{nchw_to_nhwc, random_batch};
use std::time::Instant;

/// The paper's optimiser settings; the values do not change what is allocated.
const SGD: SgdParams = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true };

/// Runs one step of `path` for `profile`'s configuration on `backend` with torchvision-style
/// initial weights and a random batch, and returns the allocator's peak from the network's
/// construction to the end of the step (bytes the backend held before are not counted).
pub fn measure<B: Backend>(backend: B, profile: &ConfigProfile, path: PathKind) -> Result<Measured> {
    let (cfg, n, h, w) = (&profile.config, profile.batch, profile.height, profile.width);
    let layout = ParamLayout::new(cfg);
    let (params, running) = (layout.init(0), layout.init_running());
    let (images, labels) = random_batch(cfg, n, h, w, 0);
    let images = nchw_to_nhwc(&images, n, cfg.in_channels, h, w);
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();

    backend.reset_peak();
    let before = backend.memory();
    let (report, seconds) = match path {
        PathKind::EfficientTraining => {
            let mut net = Network::new(backend, cfg, n, h, w, Options::train().with_optimizer())?;
            net.set_params(&params, &running)?;
            net.set_batch(&images, &labels)?;
            let start = Instant::now();
            net.forward()?;
            net.backward()?;
            net.sgd_step(SGD)?;
            net.backend().synchronize()?;
            (net.backend().memory(), start.elapsed().as_secs_f64())
        }
        PathKind::EfficientInference => {
            let mut net = Network::new(backend, cfg, n, h, w, Options::eval())?;
            net.set_params(&params, &running)?;
            net.set_batch(&images, &[])?;
            let start = Instant::now();
            net.forward()?;
            net.backend().synchronize()?;
            (net.backend().memory(), start.elapsed().as_secs_f64())
        }
        PathKind::NaiveTraining => {
            let mut net = NaiveNetwork::new(backend, cfg, n, h, w, true)?;
            net.set_params(&params, &running)?;
            net.set_batch(&images, &labels)?;
            let start = Instant::now();
            net.forward()?;
            net.backward()?;
            net.sgd_step(SGD)?;
            net.backend().synchronize()?;
            (net.backend().memory(), start.elapsed().as_secs_f64())
        }
    };
    Ok(Measured {
        peak_bytes: report.peak.saturating_sub(before.current),
        peak_by_category: by_category(&report, &before),
        seconds,
    })
}

/// Bytes per category at the peak, less what each category held before.
fn by_category(report: &MemoryReport, before: &MemoryReport) -> super::CategoryBytes {
    Category::ALL
        .iter()
        .map(|&c| (c, report.peak_category(c).saturating_sub(before.category(c))))
        .filter(|(_, b)| *b > 0)
        .collect()
}
