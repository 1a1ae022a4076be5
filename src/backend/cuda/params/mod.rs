//! `#[repr(C)]` parameter structs, one per kernel family, passed by value as each kernel's
//! first argument. Each mirrors, field for field, the struct of the same name in the `.cu`
//! file named in its doc comment; `tests/kernel_params.rs` compares the two (fields, types,
//! offsets, size) and the `.cu` side `static_assert`s the size, so a one-sided edit is caught.

use bytemuck::Pod;
use cudarc::driver::DeviceRepr;

/// A params struct a kernel takes by value.
pub trait KernelParams: Pod + DeviceRepr {}

/// Implements cudarc's `DeviceRepr` and [`KernelParams`] for params structs.
macro_rules! kernel_params {
    ($($name:ident),* $(,)?) => {
        $(
            // SAFETY: plain-old-data `#[repr(C)]` structs laid out as their CUDA mirrors.
            unsafe impl cudarc::driver::DeviceRepr for $name {}
            impl $crate::backend::cuda::params::KernelParams for $name {}
        )*
    };
}

pub mod conv;
pub mod conv1x1;
pub mod conv3x3;
mod elementwise;
pub mod head;
pub mod pool;
pub mod transition;
pub mod unfused;

pub use elementwise::*;
