//! Learning-rate schedules.

use serde::{Deserialize, Serialize};

/// How the learning rate changes over training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The DenseNet paper's: the base rate, divided by 10 once half of the epochs are done and
    /// again at three quarters (PyTorch `MultiStepLR(milestones=[E/2, 3E/4], gamma=0.1)`),
    /// constant within an epoch.
    Step,
    /// Cosine annealing from the base rate towards zero, updated every step:
    /// `lr · ½(1 + cos(π·t/T))` for step t of T.
    Cosine,
}

impl Schedule {
    /// Learning rate for step `step` (0-based) of `steps_per_epoch · epochs` steps.
    pub fn lr(self, base: f32, step: u64, steps_per_epoch: u64, epochs: u64) -> f32 {
        let total = (steps_per_epoch * epochs).max(1);
        match self {
            Schedule::Step => {
                let epoch = step / steps_per_epoch.max(1);
                // `epoch ≥ E/2` and `epoch ≥ 3E/4` in exact integer arithmetic.
                let drops = u64::from(2 * epoch >= epochs) + u64::from(4 * epoch >= 3 * epochs);
                (f64::from(base) * 0.1f64.powi(drops as i32)) as f32
            }
            Schedule::Cosine => {
                let progress = step.min(total) as f64 / total as f64;
                (f64::from(base) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
            }
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Schedule::Step => "step",
            Schedule::Cosine => "cosine",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_divides_by_ten_at_half_and_three_quarters() {
        let lr = |epoch: u64| Schedule::Step.lr(0.1, epoch * 10, 10, 300);
        assert_eq!(lr(0), 0.1);
        assert_eq!(lr(149), 0.1);
        assert!((lr(150) - 0.01).abs() < 1e-9);
        assert!((lr(224) - 0.01).abs() < 1e-9);
        assert!((lr(225) - 0.001).abs() < 1e-9);
        assert!((lr(299) - 0.001).abs() < 1e-9);
        // Two epochs: the second is past the first milestone only.
        assert!((Schedule::Step.lr(0.1, 10, 10, 2) - 0.01).abs() < 1e-9);
    }

    #[test]
    fn cosine_starts_at_base_and_decays_to_zero() {
        let lr = |t| Schedule::Cosine.lr(0.1, t, 10, 10);
        assert_eq!(lr(0), 0.1);
        assert!((lr(50) - 0.05).abs() < 1e-7);
        assert!(lr(99) > 0.0 && lr(99) < 1e-4);
        assert!((1..100).all(|t| lr(t) < lr(t - 1)));
    }
}
