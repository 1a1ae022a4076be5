//! Run-time dispatch of the cpu backend's elementwise loops to AVX-512.
//!
//! The crate is built for the baseline x86-64 target (SSE2), so that one binary runs on every
//! x86-64 CPU; the GEMMs pick their AVX-512 kernels at run time (`avx512_gemm`, or
//! `matrixmultiply`'s own dispatch), but the loops around them (BN-ReLU prologues, im2col, the BN-backward epilogue, statistics) would
//! stay 4 floats wide. [`multiversioned!`] compiles such a loop twice — for the baseline and
//! with AVX-512 (F, BW, VL) plus AVX2 and FMA enabled — and calls the wide build where the CPU
//! has those features. Rust never contracts `a·b + c` into an FMA on its own, and every loop
//! keeps one accumulator per element, so both builds compute bit-identical results: the
//! wider one only does more elements per instruction.

use std::sync::atomic::{AtomicBool, Ordering};

/// Cleared by tests that compare the two builds.
static WIDE_ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether the AVX-512 builds run: the CPU has the features, and they are enabled.
#[inline]
pub(crate) fn wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        WIDE_ENABLED.load(Ordering::Relaxed)
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Turns the AVX-512 builds off (`false`) or back on, for tests that compare the builds.
#[cfg(test)]
pub(crate) fn set_wide(enabled: bool) {
    WIDE_ENABLED.store(enabled, Ordering::Relaxed);
}

/// `multiversioned! { fn name<T: Bound, ...>(args...) -> R { body } }` defines `name`, which
/// runs `body` compiled for AVX-512 where [`wide`] says so and for the baseline otherwise.
/// The body is an `#[inline(always)]` function inlined into both builds, so whatever it calls
/// inline (closures, `#[inline]` helpers) is compiled wide too.
macro_rules! multiversioned {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$($g:ident: $bound:path),* $(,)?>)? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
        $body:block
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::backend::cpu::simd::wide() {
                    // SAFETY: `wide()` has checked that this CPU has every enabled feature.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversioned;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Precision;
    use crate::backend::cpu::CpuBackend;
    use crate::config::{DenseNetConfig, Stem};
    use crate::efficient::{Network, Options};
    use crate::params::ParamLayout;
    use crate::verify::{nchw_to_nhwc, random_batch};

    /// Loss, parameter gradients and running statistics of one training step, as bits.
    fn step_bits(cfg: &DenseNetConfig, precision: Precision) -> Vec<u32> {
        let (n, h, w) = (3, 19, 17);
        let layout = ParamLayout::new(cfg);
        let (params, running) = layout.init_random(5);
        let (images, labels) = random_batch(cfg, n, h, w, 5);
        let images = nchw_to_nhwc(&images, n, cfg.in_channels, h, w);
        let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let backend = CpuBackend::new().with_precision(precision);
        let mut net = Network::new(backend, cfg, n, h, w, Options::train()).unwrap();
        net.set_params(&params, &running).unwrap();
        net.set_batch(&images, &labels).unwrap();
        net.forward().unwrap();
        net.backward().unwrap();
        let mut out = vec![net.loss().unwrap()];
        out.extend(net.grads().unwrap());
        out.extend(net.running().unwrap());
        out.iter().map(|v| v.to_bits()).collect()
    }

    /// The AVX-512 builds compute exactly what the baseline builds do: a whole training step
    /// (every multiversioned loop: prologues, im2col, pooling, epilogues, statistics, BN
    /// backward), both stems, f32 and bf16 storage, is bit-identical with them on and off.
    #[test]
    fn wide_and_baseline_builds_agree_bit_for_bit() {
        if !wide() {
            println!("this CPU lacks AVX-512: both runs take the baseline build");
        }
        for stem in [Stem::Cifar, Stem::Imagenet] {
            let mut cfg = DenseNetConfig::preset("densenet-bc-100-k12").unwrap();
            (cfg.blocks, cfg.growth, cfg.stem) = (vec![3, 2], 7, stem);
            for precision in [Precision::Fp32, Precision::Bf16] {
                let wide_run = step_bits(&cfg, precision);
                set_wide(false);
                let baseline_run = step_bits(&cfg, precision);
                set_wide(true);
                assert!(wide_run == baseline_run, "{stem:?} {precision}: the builds differ");
            }
        }
    }
}
