//! Wall time of every op the cpu backend runs, by op, for `densenet profile --ops`: where a
//! training step spends its time. Off unless the backend was made with
//! [`CpuBackend::with_op_times`](super::CpuBackend::with_op_times); then each op takes one
//! clock reading before and after (the cpu backend's ops are synchronous, so the interval is
//! the op's whole cost) and adds it to its row under a lock taken once per op.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one op accumulated.
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    /// The op family (the `backend::<family>` module).
    pub family: &'static str,
    pub op: &'static str,
    pub calls: u64,
    pub time: Duration,
    /// Floating-point operations of its multiply-adds (2 per multiply-add), 0 for ops that are
    /// not GEMM-shaped.
    pub flops: u64,
}

/// The accumulated rows, keyed by (family, op).
#[derive(Debug, Default)]
pub(crate) struct OpTimes {
    rows: Mutex<BTreeMap<(&'static str, &'static str), OpTime>>,
}

impl OpTimes {
    pub(crate) fn add(&self, family: &'static str, op: &'static str, time: Duration, flops: u64) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let row = rows.entry((family, op)).or_insert(OpTime {
            family,
            op,
            calls: 0,
            time: Duration::ZERO,
            flops: 0,
        });
        row.calls += 1;
        row.time += time;
        row.flops += flops;
    }

    pub(crate) fn rows(&self) -> Vec<OpTime> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    pub(crate) fn clear(&self) {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Adds the time from its creation to its drop to an op's row.
pub(crate) struct OpTimer<'a> {
    times: &'a OpTimes,
    family: &'static str,
    op: &'static str,
    flops: u64,
    start: Instant,
}

impl<'a> OpTimer<'a> {
    pub(crate) fn start(times: &'a OpTimes, family: &'static str, op: &'static str, flops: u64) -> Self {
        OpTimer { times, family, op, flops, start: Instant::now() }
    }
}

impl Drop for OpTimer<'_> {
    fn drop(&mut self) {
        self.times.add(self.family, self.op, self.start.elapsed(), self.flops);
    }
}
