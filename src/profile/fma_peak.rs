//! This CPU's measured peak of f32 multiply-adds: the roof that `densenet profile --ops`
//! compares each op family's achieved GFLOP/s with.
//!
//! Each thread of rayon's pool runs a chain-free loop of vector FMAs (twelve independent
//! accumulators, enough to cover the FMA latency on both ports) in the widest instruction set
//! the CPU has (AVX-512, else AVX2 + FMA, else scalar `mul_add`), all threads at once, for a
//! fixed number of iterations; the peak is their total FLOPs over the wall time.

use rayon::prelude::*;
use std::time::Instant;

/// The instruction set the peak was measured with and the GFLOP/s of all threads together.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FmaPeak {
    pub isa: &'static str,
    pub threads: usize,
    pub gflops: f64,
}

/// Multiply-adds per accumulator and thread: about 0.1–0.3 s on a current core.
const ITERS: u64 = 20_000_000;
const ACCUMULATORS: usize = 12;

/// Measures the peak (takes a fraction of a second).
pub fn measure() -> FmaPeak {
    let (isa, lanes, kernel) = pick();
    let threads = rayon::current_num_threads();
    let start = Instant::now();
    let sink: f32 = (0..threads).into_par_iter().map(|t| kernel(ITERS, t as f32)).sum();
    let seconds = start.elapsed().as_secs_f64();
    // The sum is printed nowhere but must not be optimised away.
    std::hint::black_box(sink);
    let flops = 2.0 * (ITERS * ACCUMULATORS as u64 * lanes) as f64 * threads as f64;
    FmaPeak { isa, threads, gflops: flops / seconds / 1e9 }
}

type Kernel = fn(u64, f32) -> f32;

fn pick() -> (&'static str, u64, Kernel) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return ("AVX-512", 16, |n, seed| unsafe { x86::avx512(n, seed) });
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return ("AVX2+FMA", 8, |n, seed| unsafe { x86::avx2(n, seed) });
        }
    }
    ("scalar", 1, scalar)
}

fn scalar(n: u64, seed: f32) -> f32 {
    let mut acc = [seed; ACCUMULATORS];
    for _ in 0..n {
        for a in &mut acc {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::ACCUMULATORS;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) fn avx512(n: u64, seed: f32) -> f32 {
        let (m, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(seed); ACCUMULATORS];
        for _ in 0..n {
            for a in &mut acc {
                *a = _mm512_fmadd_ps(*a, m, c);
            }
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn avx2(n: u64, seed: f32) -> f32 {
        let (m, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(seed); ACCUMULATORS];
        for _ in 0..n {
            for a in &mut acc {
                *a = _mm256_fmadd_ps(*a, m, c);
            }
        }
        let mut lanes = [0f32; 8];
        acc.iter()
            .map(|&a| {
                // SAFETY: `lanes` holds 8 floats, what one 256-bit store writes.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
                lanes.iter().sum::<f32>()
            })
            .sum()
    }
}
