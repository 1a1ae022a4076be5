use super::SgdOps;
use crate::backend::cuda::device::{Device, LaunchCfg};
use crate::backend::cuda::{DeviceBuf, KernelBackend, kernel_params};
use crate::backend::{SgdParams, validate};
use crate::error::Result;
use bytemuck::{Pod, Zeroable};

/// `kernels/sgd.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SgdKernelParams {
    pub len: u64,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: u32,
}

kernel_params!(SgdKernelParams);

impl<D: Device> SgdOps for KernelBackend<D> {
    fn sgd_update(
        &self,
        params: &mut DeviceBuf<D>,
        grads: &DeviceBuf<D>,
        velocity: &mut DeviceBuf<D>,
        len: usize,
        hp: SgdParams,
    ) -> Result<()> {
        validate::sgd_update(params, grads, velocity, len)?;
        self.dtypes(&[], &[("params", &*params), ("grads", grads), ("velocity", &*velocity)])?;
        let p = SgdKernelParams {
            len: len as u64,
            lr: hp.lr,
            momentum: hp.momentum,
            weight_decay: hp.weight_decay,
            nesterov: u32::from(hp.nesterov),
        };
        let addrs = [self.addr(params, 0), self.addr(grads, 0), self.addr(velocity, 0)];
        // SAFETY: the three buffers cover `len` floats (checked above).
        unsafe { self.device.launch("sgd_update_f32", LaunchCfg::grid_stride::<256>(len, 1024), &p, &addrs) }
    }
}
