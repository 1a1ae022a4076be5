//! The arithmetic of the network's convolutions: [`Precision`], a property of a backend
//! (`CpuBackend::with_precision`, `KernelBackend::with_precision`,
//! `AnyBackend::with_precision`) recorded in training checkpoints.
//!
//! Whatever the precision, weights (master weights, momentum, parameter gradients), batch
//! statistics and the per-channel BN-backward sums stay f32 and every GEMM accumulates in f32;
//! what changes is how the convolutions' operands enter the multiply.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How the convolutions (1×1, 3×3, transition, stem) multiply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands, f32 fused multiply-adds: the exact path, which `verify` holds to 1e-4
    /// of the f64 reference.
    #[default]
    Fp32,
    /// f32 storage; each GEMM operand is rounded to TF32 (10 explicit mantissa bits, round
    /// to nearest, ties away from zero, as `cvt.rna.tf32.f32`) and multiplied on tensor cores
    /// (`mma.sync` m16n8k8) with f32 accumulation. The cpu backend rounds its operands the
    /// same way, so both compute the same products.
    Tf32,
    /// bf16 storage of the activations and their gradients (feature storages S, the
    /// bottleneck workspace Z and dZ, gradient storages G, the input batch and the stem's
    /// output; see [`Dtype`]); each GEMM operand is rounded to bf16 (8 significant bits,
    /// round to nearest even) and multiplied on tensor cores (`mma.sync` m16n8k16) with f32
    /// accumulation. Statistics, BN-backward sums, parameters and the head stay f32.
    Bf16,
}

impl Precision {
    /// Every precision the command line accepts, in the order `--help` lists them.
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Tf32, Precision::Bf16];

    /// `fp32`, `tf32`: the command-line and checkpoint spelling.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Element type of the activations and their gradients under this precision.
    pub fn storage(self) -> Dtype {
        match self {
            Precision::Fp32 | Precision::Tf32 => Dtype::F32,
            Precision::Bf16 => Dtype::Bf16,
        }
    }

    /// Unit roundoff of a GEMM operand: the largest relative error of rounding one f32 to
    /// the operand format (0 for fp32, whose operands are used as they are).
    pub fn operand_roundoff(self) -> f64 {
        match self {
            Precision::Fp32 => 0.0,
            Precision::Tf32 => 2f64.powi(-11),
            Precision::Bf16 => 2f64.powi(-8),
        }
    }

    /// Rounds a GEMM operand to what the multiply sees (identity for fp32).
    pub fn round_operand(self, x: f32) -> f32 {
        match self {
            Precision::Fp32 => x,
            Precision::Tf32 => round_tf32(x),
            Precision::Bf16 => round_bf16(x),
        }
    }
}

/// Element type of a buffer. Parameters, statistics and every reduction are always f32; under
/// [`Precision::Bf16`] the activation-shaped buffers are bf16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    /// bfloat16: f32's sign and exponent, 7 explicit mantissa bits.
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `x` as a bfloat16 bit pattern, rounded as `cvt.rn.bf16.f32` (and `__float2bfloat16`): to
/// nearest, ties to even; values beyond the largest bf16 become infinities; every NaN becomes
/// the canonical NaN 0x7fff, as on the GPU, so that backends store identical bits.
pub fn bf16_bits(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fff;
    }
    let bits = x.to_bits();
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// The f32 a bfloat16 bit pattern stands for (exact).
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// `x` rounded to bf16 and widened back to f32 (see [`bf16_bits`]).
pub fn round_bf16(x: f32) -> f32 {
    bf16_value(bf16_bits(x))
}

/// `x` rounded to TF32 as `cvt.rna.tf32.f32` does: to nearest, ties away from zero, kept in
/// an f32 whose low 13 mantissa bits are zero. Infinities stay; a NaN stays a NaN (its
/// payload may change, never into an infinity).
pub fn round_tf32(x: f32) -> f32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((bits | 0x0040_0000) & 0xffff_e000);
    }
    if x.is_infinite() {
        return x;
    }
    f32::from_bits(bits.wrapping_add(0x1000) & 0xffff_e000)
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Precision::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Precision::ALL.iter().map(|p| p.name()).collect();
            Error::Config(format!("precision `{s}`: expected one of {}", names.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Normal f32s of both signs and random bits over a wide exponent range, from a seeded
    /// xorshift (subnormals are left out: they carry fewer bits than a roundoff assumes).
    fn random_normals(seed: u64) -> impl Iterator<Item = f32> {
        let mut state = seed;
        std::iter::repeat_with(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            f32::from_bits((state >> 32) as u32 & 0x3fff_ffff) * if state & 1 == 0 { 1.0 } else { -1.0 }
        })
        .take(10_000)
        .filter(|x| x.is_normal())
    }

    #[test]
    fn tf32_rounds_to_nearest_ties_away_and_keeps_specials() {
        // 1 + 2^-11 is a tie between 1 and 1 + 2^-10: away from zero.
        assert_eq!(round_tf32(1.0 + 2f32.powi(-11)), 1.0 + 2f32.powi(-10));
        assert_eq!(round_tf32(-(1.0 + 2f32.powi(-11))), -(1.0 + 2f32.powi(-10)));
        // Just below the tie: down.
        assert_eq!(round_tf32(1.0 + 2f32.powi(-11) - 2f32.powi(-23)), 1.0);
        assert_eq!(round_tf32(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_tf32(f32::NEG_INFINITY), f32::NEG_INFINITY);
        // A NaN whose payload lies only in the dropped bits stays a NaN.
        assert!(round_tf32(f32::from_bits(0x7f80_0001)).is_nan());
        assert!(round_tf32(f32::NAN).is_nan());
        // The largest finite f32 rounds up out of range, as the hardware conversion does.
        assert_eq!(round_tf32(f32::MAX), f32::INFINITY);
        // The relative error never exceeds the unit roundoff.
        for x in random_normals(0x2545_f491_4f6c_dd1d) {
            let r = round_tf32(x);
            assert_eq!(r.to_bits() & 0x1fff, 0);
            let rel = ((f64::from(r) - f64::from(x)) / f64::from(x)).abs();
            assert!(rel <= Precision::Tf32.operand_roundoff(), "{x}: {rel}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_specials() {
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even (1).
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3·2^-8 is a tie between 1 + 2^-7 and 1 + 2^-6: to even (1 + 2^-6).
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(round_bf16(-(1.0 + 2f32.powi(-8) + 2f32.powi(-23))), -(1.0 + 2f32.powi(-7)));
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert_eq!(bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fff);
        assert_eq!(bf16_bits(-f32::NAN), 0x7fff);
        assert_eq!(bf16_bits(-0.0), 0x8000);
        for x in random_normals(0x9e37_79b9_7f4a_7c15) {
            let r = round_bf16(x);
            let rel = ((f64::from(r) - f64::from(x)) / f64::from(x)).abs();
            assert!(rel <= Precision::Bf16.operand_roundoff(), "{x}: {rel}");
            // Nearest: the neighbour on the other side is no closer.
            let other = bf16_value(if r.abs() > x.abs() { bf16_bits(r) - 1 } else { bf16_bits(r) + 1 });
            assert!((f64::from(other) - f64::from(x)).abs() >= (f64::from(r) - f64::from(x)).abs(), "{x}");
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{}\"", p.name()));
        }
        let e = "fp16".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("fp32, tf32, bf16"), "{e}");
    }
}
