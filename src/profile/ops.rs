//! `densenet profile --ops`: where one training step of the efficient path spends its time
//! on the cpu backend, by op family and op, with each GEMM-shaped op's achieved GFLOP/s
//! against this CPU's measured FMA peak.

use super::fma_peak::{self, FmaPeak};
use super::{ConfigProfile, PathKind, measure};
use crate::backend::cpu::CpuBackend;
use crate::error::Result;
use serde::Serialize;
use std::fmt::Write;

/// One op's share of a step.
#[derive(Clone, Debug, Serialize)]
pub struct OpRow {
    pub family: &'static str,
    pub op: &'static str,
    /// Calls per step.
    pub calls: f64,
    /// Seconds per step.
    pub seconds: f64,
    /// Fraction of the step's wall time.
    pub share: f64,
    /// Achieved GFLOP/s of its multiply-adds; `None` for ops that are not GEMM-shaped.
    pub gflops: Option<f64>,
}

/// The ops of one step, and the roof.
#[derive(Clone, Debug, Serialize)]
pub struct OpProfile {
    pub name: String,
    pub batch: usize,
    /// Median wall time of a step.
    pub step_seconds: f64,
    /// Steps the op times are averaged over (the untimed warm-up step included).
    pub steps: usize,
    pub peak: FmaPeak,
    /// Every op, by family then op.
    pub ops: Vec<OpRow>,
}

/// Runs `steps` training steps of `profile`'s configuration on a cpu backend that times its
/// ops (see [`measure`] for the steps), then measures the FMA peak.
pub fn profile_ops(profile: &ConfigProfile, steps: usize) -> Result<OpProfile> {
    let backend = CpuBackend::with_op_times().with_precision(profile.precision);
    let measured = measure(backend.clone(), profile, PathKind::EfficientTraining, steps)?;
    let runs = steps.max(1) + usize::from(steps > 1);
    let ops = backend
        .op_times()
        .into_iter()
        .map(|t| {
            let seconds = t.time.as_secs_f64() / runs as f64;
            OpRow {
                family: t.family,
                op: t.op,
                calls: t.calls as f64 / runs as f64,
                seconds,
                share: seconds / measured.seconds,
                gflops: (t.flops > 0).then(|| t.flops as f64 / t.time.as_secs_f64().max(1e-12) / 1e9),
            }
        })
        .collect();
    Ok(OpProfile {
        name: profile.name.clone(),
        batch: profile.batch,
        step_seconds: measured.seconds,
        steps: runs,
        peak: fma_peak::measure(),
        ops,
    })
}

/// The table: one line per family (its ops' sum), then its ops, largest share first.
pub fn render(p: &OpProfile) -> String {
    let mut out = String::new();
    let peak = p.peak.gflops;
    let _ = writeln!(
        out,
        "{}, batch {}: training step {:.3} s (median); FMA peak {:.0} GFLOP/s ({}, {} threads)",
        p.name, p.batch, p.step_seconds, peak, p.peak.isa, p.peak.threads
    );
    let _ = writeln!(
        out,
        "  {:<34} {:>9} {:>7} {:>9} {:>8} {:>7}",
        "family / op", "calls", "share", "s/step", "GFLOP/s", "of peak"
    );
    let mut families: Vec<&str> = p.ops.iter().map(|o| o.family).collect();
    families.dedup();
    let family_seconds = |f: &str| p.ops.iter().filter(|o| o.family == f).map(|o| o.seconds).sum::<f64>();
    families.sort_by(|a, b| family_seconds(b).total_cmp(&family_seconds(a)));
    let rate = |flops_per_s: Option<f64>| match flops_per_s {
        Some(g) => (format!("{g:.1}"), format!("{:.1}%", 100.0 * g / peak)),
        None => ("-".into(), "-".into()),
    };
    for family in families {
        let mut ops: Vec<&OpRow> = p.ops.iter().filter(|o| o.family == family).collect();
        ops.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        let seconds = family_seconds(family);
        let flops: f64 = ops.iter().filter_map(|o| o.gflops.map(|g| g * o.seconds)).sum();
        let (g, of) = rate((flops > 0.0).then(|| flops / seconds));
        let calls: f64 = ops.iter().map(|o| o.calls).sum();
        let share = 100.0 * seconds / p.step_seconds;
        let _ = writeln!(out, "  {family:<34} {calls:>9.0} {share:>6.1}% {seconds:>9.4} {g:>8} {of:>7}");
        for o in ops {
            let (g, of) = rate(o.gflops);
            let _ = writeln!(
                out,
                "    {:<32} {:>9.0} {:>6.1}% {:>9.4} {g:>8} {of:>7}",
                o.op,
                o.calls,
                100.0 * o.share,
                o.seconds
            );
        }
    }
    let timed: f64 = p.ops.iter().map(|o| o.seconds).sum();
    let _ = writeln!(
        out,
        "  ops sum to {:.1}% of the median step (op times are means over every step run, the warm-up\n  included; the rest of a step is buffer copies, uploads and the host side)",
        100.0 * timed / p.step_seconds
    );
    out
}
