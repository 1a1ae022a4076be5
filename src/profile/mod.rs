//! Memory profiling: the planned and measured peak of one training step of the efficient
//! path and of the baseline (and of an efficient inference pass), per configuration,
//! rendered as a table ([`table`]), CSV ([`csv`]) and an SVG plot of peak memory against
//! depth ([`svg`]).
//!
//! Planning is free; running is not (a real step allocates the planned bytes and takes
//! seconds to minutes on a CPU), so each path runs only when its *planned* peak is within a
//! [`RunLimit`] — anything larger is reported as planned only, never allocated blindly.
//! Measuring is honest: the peak comes from the backend's byte-counting allocator during a
//! real step on random data, and is compared with the plan byte for byte.
//!
//! What the allocator counts: every buffer a backend hands out. Per-op scratch that a
//! backend keeps internally (the cpu backend's chunk-sized GEMM tiles and per-segment weight
//! gradient partials, a few MB at most) is not a buffer and is not counted, on either path.

pub mod csv;
pub mod fma_peak;
mod measure;
pub mod ops;
pub mod svg;
pub mod table;

pub use measure::measure;

use crate::Precision;
use crate::backend::Category;
use crate::config::DenseNetConfig;
use crate::efficient::Options;
use crate::error::Result;
use crate::plan::{BaselinePlan, CategoryBytes, Dtype, EfficientPlan};
use serde::Serialize;

/// What is profiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// One training step (forward, backward, SGD with momentum) of the memory-efficient path.
    EfficientTraining,
    /// One inference forward (running statistics, no gradients) of the efficient path.
    EfficientInference,
    /// One training step of the textbook baseline
    /// ([`BaselineNetwork`](crate::baseline::BaselineNetwork)).
    BaselineTraining,
}

impl PathKind {
    pub const ALL: [PathKind; 3] =
        [PathKind::EfficientTraining, PathKind::EfficientInference, PathKind::BaselineTraining];

    pub fn label(self) -> &'static str {
        match self {
            PathKind::EfficientTraining => "efficient training",
            PathKind::EfficientInference => "efficient inference",
            PathKind::BaselineTraining => "baseline training",
        }
    }
}

/// The allocator's peak during a real run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Measured {
    pub peak_bytes: usize,
    /// Bytes per category at the moment of the peak.
    pub peak_by_category: CategoryBytes,
    /// Median wall time of the timed steps (construction excluded).
    pub seconds: f64,
    /// Steps timed (`densenet profile --steps`).
    pub steps: usize,
}

/// Planned (and possibly measured) peak of one path.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PathProfile {
    pub path: PathKind,
    pub planned_bytes: usize,
    /// Bytes per category at the planned peak.
    pub planned_by_category: CategoryBytes,
    pub measured: Option<Measured>,
    /// Why the path was only planned; `None` when it is to be run (or was).
    pub not_run: Option<String>,
}

impl PathProfile {
    /// Whether the measurement equals the plan, in total and per category (`None` if not run).
    pub fn matches(&self) -> Option<bool> {
        self.measured
            .as_ref()
            .map(|m| m.peak_bytes == self.planned_bytes && m.peak_by_category == self.planned_by_category)
    }

    /// The measured peak if run, else the planned one.
    pub fn best_bytes(&self) -> usize {
        self.measured.as_ref().map_or(self.planned_bytes, |m| m.peak_bytes)
    }
}

/// One network at one batch and image size.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfigProfile {
    pub name: String,
    /// Layers with weights: two convolutions per dense layer, the stem conv, one conv per
    /// transition and the classifier (DenseNet-BC-100 has depth 100, densenet121 121).
    pub depth: usize,
    pub growth: usize,
    pub config: DenseNetConfig,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    /// How the convolutions multiply (the feature storage's element type follows from it).
    pub precision: Precision,
    pub backend: String,
    pub paths: Vec<PathProfile>,
}

impl ConfigProfile {
    pub fn path(&self, kind: PathKind) -> Option<&PathProfile> {
        self.paths.iter().find(|p| p.path == kind)
    }

    /// Baseline over efficient training peak: measured when both ran, else planned (the plans
    /// are exact, so the two agree whenever both exist). The flag says whether it was measured.
    pub fn ratio(&self) -> Option<(f64, bool)> {
        let (e, n) = (self.path(PathKind::EfficientTraining)?, self.path(PathKind::BaselineTraining)?);
        match (&e.measured, &n.measured) {
            (Some(em), Some(nm)) => Some((nm.peak_bytes as f64 / em.peak_bytes as f64, true)),
            _ => Some((n.planned_bytes as f64 / e.planned_bytes as f64, false)),
        }
    }
}

/// The largest planned peak a path may have to be run, and why (for the "not run" note).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunLimit {
    pub bytes: usize,
    pub reason: String,
}

/// Layers with weights (see [`ConfigProfile::depth`]).
pub fn depth(cfg: &DenseNetConfig) -> usize {
    2 * cfg.num_layers() + cfg.blocks.len() + 1
}

/// Plans every path of `cfg` at `batch` × `height × width` and decides which will run under
/// `limit`. Training profiles include SGD momentum, as a real training step has.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    name: &str,
    cfg: &DenseNetConfig,
    batch: usize,
    height: usize,
    width: usize,
    precision: Precision,
    backend: &str,
    limit: &RunLimit,
) -> Result<ConfigProfile> {
    let dtype = precision.storage();
    let efficient = |opts| EfficientPlan::new(cfg, batch, height, width, dtype, opts);
    let train = efficient(Options::train().with_optimizer())?;
    let eval = efficient(Options::eval())?;
    // The baseline is the textbook f32 implementation whatever the precision: its buffers
    // stay f32 (its convolutions multiply as the backend's precision says).
    let baseline = BaselinePlan::new(cfg, batch, height, width, Dtype::F32, true)?;
    let planned = |path, bytes, by: CategoryBytes| PathProfile {
        path,
        planned_bytes: bytes,
        planned_by_category: by,
        measured: None,
        not_run: (bytes > limit.bytes).then(|| {
            format!(
                "planned {} > run limit {} ({})",
                format_bytes(bytes),
                format_bytes(limit.bytes),
                limit.reason
            )
        }),
    };
    Ok(ConfigProfile {
        name: name.to_string(),
        depth: depth(cfg),
        growth: cfg.growth,
        config: cfg.clone(),
        batch,
        height,
        width,
        precision,
        backend: backend.to_string(),
        paths: vec![
            planned(PathKind::EfficientTraining, train.total_bytes, train.by_category()),
            planned(PathKind::EfficientInference, eval.total_bytes, eval.by_category()),
            planned(PathKind::BaselineTraining, baseline.peak_bytes, baseline.peak_by_category),
        ],
    })
}

/// Bytes in decimal units with three significant digits: `950 B`, `56.6 MB`, `3.32 GB`.
pub fn format_bytes(bytes: usize) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 999.5 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if v >= 99.95 {
        format!("{v:.0} {}", UNITS[unit])
    } else if v >= 9.995 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// Short label of a category for tables and CSV headers.
pub(crate) fn category_key(c: Category) -> &'static str {
    match c {
        Category::FeatureStorage => "feature_storage",
        Category::GradientBuffers => "gradient_buffers",
        Category::Workspace => "workspace",
        Category::Parameters => "parameters",
        Category::StemHead => "stem_head",
        Category::Baseline => "baseline",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_formatted_with_three_significant_digits() {
        let cases = [
            (0, "0 B"),
            (999, "999 B"),
            (1_000, "1.00 kB"),
            (56_623_104, "56.6 MB"),
            (229_953_412, "230 MB"),
            (3_318_000_000, "3.32 GB"),
            (999_600_000, "1.00 GB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(format_bytes(bytes), text);
        }
    }

    #[test]
    fn depth_counts_layers_with_weights() {
        assert_eq!(depth(&DenseNetConfig::preset("densenet121").unwrap()), 121);
        assert_eq!(depth(&DenseNetConfig::preset("densenet-bc-100-k12").unwrap()), 100);
        assert_eq!(depth(&DenseNetConfig::bc_cifar(250, 24).unwrap()), 250);
    }

    #[test]
    fn paths_over_the_limit_are_planned_only() {
        let cfg = DenseNetConfig::preset("densenet-bc-100-k12").unwrap();
        let limit = RunLimit { bytes: 1_000_000_000, reason: "test".into() };
        let p = plan("bc-100", &cfg, 64, 32, 32, Precision::Fp32, "cpu", &limit).unwrap();
        assert!(p.path(PathKind::EfficientTraining).unwrap().not_run.is_none());
        let baseline = p.path(PathKind::BaselineTraining).unwrap();
        assert!(baseline.not_run.as_deref().unwrap().contains("> run limit 1.00 GB (test)"));
        let (ratio, measured) = p.ratio().unwrap();
        assert!(ratio > 10.0 && !measured);
    }
}
