//! Element types of the cpu backend's buffers: f32, or bf16 for the activation-shaped buffers
//! under `Precision::Bf16`. Every op reads its activations through [`Elem::get`] (exact for
//! both) and writes them through [`Elem::put`] (round to nearest even for bf16), computing in
//! f32 between: convert on load, round on store, as the kernels do. The ops are generic over
//! each activation argument's element type, and [`with_elems!`] picks the instance from the
//! buffers' dtypes; monomorphised for f32, `get` and `put` are the identity.

use crate::precision::{Dtype, bf16_bits};
use half::bf16;

/// An element type of activations in a cpu buffer.
pub(crate) trait Elem: Copy + Default + Send + Sync + 'static {
    /// The value, widened to f32 (exact).
    fn get(self) -> f32;
    /// `v` rounded to this type.
    fn put(v: f32) -> Self;
    /// The slice itself when the type is f32, so that a GEMM reads or writes it in place.
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}

impl Elem for f32 {
    #[inline(always)]
    fn get(self) -> f32 {
        self
    }
    #[inline(always)]
    fn put(v: f32) -> Self {
        v
    }
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn get(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn put(v: f32) -> Self {
        bf16::from_bits(bf16_bits(v))
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

/// A cpu buffer's elements.
#[derive(Debug)]
pub(crate) enum CpuData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

impl CpuData {
    pub(crate) fn len(&self) -> usize {
        match self {
            CpuData::F32(v) => v.len(),
            CpuData::Bf16(v) => v.len(),
        }
    }
    pub(crate) fn dtype(&self) -> Dtype {
        match self {
            CpuData::F32(_) => Dtype::F32,
            CpuData::Bf16(_) => Dtype::Bf16,
        }
    }
}

/// `with_elems!({ body } x = buf_x, mut y = buf_y, ...)` runs `body` with each name bound to
/// the elements of its buffer (`&[T]`, or `&mut [T]` after `mut`) for the buffer's element
/// type: one instance of the body per combination of dtypes, so that the generic ops are
/// monomorphised for every mix.
macro_rules! with_elems {
    ({ $($body:tt)* }) => { { $($body)* } };
    ({ $($body:tt)* } mut $name:ident = $buf:expr $(, $($rest:tt)*)?) => {
        match &mut $buf.data {
            $crate::backend::cpu::elem::CpuData::F32($name) => with_elems!({ $($body)* } $($($rest)*)?),
            $crate::backend::cpu::elem::CpuData::Bf16($name) => with_elems!({ $($body)* } $($($rest)*)?),
        }
    };
    ({ $($body:tt)* } $name:ident = $buf:expr $(, $($rest:tt)*)?) => {
        match &$buf.data {
            $crate::backend::cpu::elem::CpuData::F32($name) => with_elems!({ $($body)* } $($($rest)*)?),
            $crate::backend::cpu::elem::CpuData::Bf16($name) => with_elems!({ $($body)* } $($($rest)*)?),
        }
    };
}
pub(crate) use with_elems;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_trips_what_it_holds_and_rounds_the_rest() {
        for v in [0.0f32, -1.5, 3.140625, 2f32.powi(-100), -65280.0] {
            assert_eq!(bf16::put(v).get(), v);
        }
        assert_eq!(bf16::put(1.0 + 2f32.powi(-8)).get(), 1.0);
        assert!(bf16::put(f32::NAN).get().is_nan());
        assert_eq!(f32::put(0.1).get(), 0.1);
    }
}
