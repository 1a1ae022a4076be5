//! Progress bars and per-epoch output for `densenet train` and `densenet eval`.
//!
//! The bars go to stderr and are hidden when stderr is not a terminal; the one-line epoch
//! summaries go to stdout, and the JSON lines to the `--log` file.

use super::train_dir::Log;
use densenet::error::Result;
use densenet::train::{BatchProgress, EpochMetrics, Observer, SkippedImages};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Shows a bar per epoch and per test pass, prints a summary line per epoch and appends it
/// as JSON to the log.
pub struct Progress {
    bar: Option<ProgressBar>,
    log: Option<Log>,
    /// The number of a signal asking training to stop (0: none), set by a signal handler.
    stop: Option<Arc<AtomicUsize>>,
}

impl Progress {
    pub fn new(log: Option<Log>) -> Self {
        Progress { bar: None, log, stop: None }
    }

    /// Stops training at the next safe point once `signal` holds a signal number.
    pub fn with_stop(self, signal: Arc<AtomicUsize>) -> Self {
        Progress { stop: Some(signal), ..self }
    }

    /// The bar for a pass of `len` batches labelled `prefix`, created on its first batch.
    fn bar(&mut self, prefix: String, len: usize) -> &ProgressBar {
        if self.bar.as_ref().is_some_and(|b| b.prefix() != prefix) {
            self.finish();
        }
        self.bar.get_or_insert_with(|| {
            let style =
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}")
                    .expect("the template is valid")
                    .progress_chars("=> ");
            ProgressBar::new(len as u64).with_style(style).with_prefix(prefix)
        })
    }

    /// Removes the current bar, if any.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn train_batch(&mut self, p: &BatchProgress) {
        let bar = self.bar(format!("epoch {}/{}", p.epoch, p.epochs), p.batches);
        bar.set_position(p.batch as u64);
        bar.set_message(format!(
            "loss {:.3}  acc {:.1}%  {:.0} img/s  mem {}",
            p.mean_loss,
            100.0 * p.accuracy,
            p.images_per_second,
            megabytes(p.memory.current)
        ));
    }

    fn eval_batch(&mut self, done: usize, total: usize) {
        self.bar("test".into(), total).set_position(done as u64);
    }

    fn images_skipped(&mut self, s: &SkippedImages) {
        self.finish();
        eprintln!("warning: {}: skipped {} unreadable image(s); the first: {}", s.pass, s.count, s.first);
    }

    fn epoch_end(&mut self, m: &EpochMetrics) -> Result<()> {
        self.finish();
        println!("{}", summary(m));
        if let Some(log) = self.log.as_mut() {
            log.append(&serde_json::to_string(m).map_err(std::io::Error::other)?)?;
        }
        Ok(())
    }

    fn stop_requested(&mut self) -> Option<String> {
        match self.stop.as_ref()?.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal_name(signal)),
        }
    }
}

/// "SIGINT", "SIGTERM", or the number.
pub fn signal_name(signal: usize) -> String {
    match signal as i32 {
        signal_hook::consts::SIGINT => "SIGINT".into(),
        signal_hook::consts::SIGTERM => "SIGTERM".into(),
        _ => format!("signal {signal}"),
    }
}

/// One line per epoch.
fn summary(m: &EpochMetrics) -> String {
    format!(
        "epoch {:>w$}/{}  lr {:.4}  train loss {:.3} acc {:5.1}%  test loss {:.3} acc {:5.1}%  \
         {:.0} img/s  {:.1} s  peak mem {}",
        m.epoch,
        m.epochs,
        m.lr,
        m.train_loss,
        100.0 * m.train_accuracy,
        m.test_loss,
        100.0 * m.test_accuracy,
        m.images_per_second,
        m.train_seconds + m.eval_seconds,
        megabytes(m.peak_memory_bytes),
        w = m.epochs.to_string().len()
    )
}

pub fn megabytes(bytes: usize) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
