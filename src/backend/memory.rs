//! Byte counting for device allocations: every buffer a backend hands out is registered here
//! under a [`Category`], so the peak of a training step can be measured per category and
//! compared with the planner's prediction.

use crate::error::{Error, Result};
use serde::Serialize;
use std::sync::Mutex;

/// Available host memory from `/proc/meminfo` (`MemAvailable`), if the system reports it.
pub fn host_available_bytes() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses `needed` bytes for `what` on `device` when they exceed `available` (the device's
/// free memory; `None` when it cannot tell, which lets the allocation decide). Checked before
/// allocating, so that a size that fits the arithmetic but not the machine is an error naming
/// both figures rather than an allocation abort or a visit from the OOM killer (Linux
/// overcommits: a large `Vec` succeeds and the process dies when it touches the pages).
pub fn ensure_fits(what: &str, needed: usize, device: &str, available: Option<usize>) -> Result<()> {
    match available {
        Some(available) if needed > available => {
            Err(Error::InsufficientMemory { what: what.into(), device: device.into(), needed, available })
        }
        _ => Ok(()),
    }
}

/// [`ensure_fits`] for host memory (data sets, batches and parameter copies kept on the host).
pub fn ensure_host_fits(what: &str, needed: usize) -> Result<()> {
    ensure_fits(what, needed, "the host", host_available_bytes())
}

/// What an allocation is for; the memory planner predicts bytes per category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Dense-block feature storages S and their per-channel statistics.
    FeatureStorage,
    /// Gradient ping-pong buffers G and the deferred-correction accumulators.
    GradientBuffers,
    /// Per-block workspace: bottleneck output Z and its gradient.
    Workspace,
    /// Parameters, their gradients, optimiser state and running statistics.
    Parameters,
    /// Input batch, stem and head buffers (logits, pooled features, loss).
    StemHead,
    /// Buffers of the baseline (concatenations, stored BN/ReLU outputs).
    Baseline,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::FeatureStorage,
        Category::GradientBuffers,
        Category::Workspace,
        Category::Parameters,
        Category::StemHead,
        Category::Baseline,
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Category::FeatureStorage => "feature storage",
            Category::GradientBuffers => "gradient buffers",
            Category::Workspace => "workspace",
            Category::Parameters => "parameters",
            Category::StemHead => "stem/head",
            Category::Baseline => "baseline",
        }
    }

    fn index(&self) -> usize {
        Category::ALL.iter().position(|c| c == self).expect("every category is in ALL")
    }
}

/// Current and peak bytes, in total and per category (indexed like [`Category::ALL`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryReport {
    pub current: usize,
    pub peak: usize,
    /// Current bytes per category.
    pub by_category: [usize; 6],
    /// Bytes per category at the moment the total peaked.
    pub peak_by_category: [usize; 6],
}

impl MemoryReport {
    pub fn category(&self, c: Category) -> usize {
        self.by_category[c.index()]
    }
    pub fn peak_category(&self, c: Category) -> usize {
        self.peak_by_category[c.index()]
    }
}

/// Thread-safe allocation counter shared by a backend and its buffers.
#[derive(Debug, Default)]
pub struct MemoryTracker {
    state: Mutex<MemoryReport>,
}

impl MemoryTracker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn allocated(&self, bytes: usize, category: Category) {
        let mut s = self.lock();
        s.current += bytes;
        s.by_category[category.index()] += bytes;
        if s.current > s.peak {
            s.peak = s.current;
            s.peak_by_category = s.by_category;
        }
    }

    pub fn freed(&self, bytes: usize, category: Category) {
        let mut s = self.lock();
        s.current -= bytes;
        s.by_category[category.index()] -= bytes;
    }

    pub fn report(&self) -> MemoryReport {
        self.lock().clone()
    }

    pub fn reset_peak(&self) {
        let mut s = self.lock();
        s.peak = s.current;
        s.peak_by_category = s.by_category;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryReport> {
        // A panic while holding this lock cannot leave the counters half-updated (each update
        // is a few integer additions), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_follows_allocations() {
        let t = MemoryTracker::new();
        t.allocated(100, Category::Workspace);
        t.allocated(50, Category::FeatureStorage);
        t.freed(100, Category::Workspace);
        t.allocated(20, Category::Workspace);
        let r = t.report();
        assert_eq!((r.current, r.peak), (70, 150));
        assert_eq!(r.peak_category(Category::Workspace), 100);
        assert_eq!(r.category(Category::Workspace), 20);
        t.reset_peak();
        assert_eq!(t.report().peak, 70);
    }
}
