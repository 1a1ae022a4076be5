use super::LossOps;
use crate::backend::cuda::device::{Device, LaunchCfg};
use crate::backend::cuda::{DeviceBuf, KernelBackend, kernel_params, u32_of};
use crate::backend::{View, ViewMut, validate};
use crate::error::Result;
use bytemuck::{Pod, Zeroable};

/// `kernels/loss.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SoftmaxXentParams {
    pub rows: u32,
    pub classes: u32,
}

kernel_params!(SoftmaxXentParams);

impl<D: Device> LossOps for KernelBackend<D> {
    /// See `LossOps::softmax_xent`. A label that is not a class index gives a NaN loss.
    fn softmax_xent(
        &self,
        logits: View<'_, DeviceBuf<D>>,
        labels: &DeviceBuf<D>,
        loss: &mut DeviceBuf<D>,
        dlogits: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        let (n, classes) = validate::softmax_xent(logits, labels, loss, dlogits.as_view())?;
        self.dtypes(
            &[],
            &[("logits", logits.buf), ("labels", labels), ("loss", &*loss), ("dlogits", &*dlogits.buf)],
        )?;
        let (logits, dlogits) = (logits.buf, dlogits.buf);
        let p = SoftmaxXentParams { rows: u32_of(n, "batch")?, classes: u32_of(classes, "classes")? };
        let addrs = [self.addr(logits, 0), self.addr(labels, 0), self.addr(loss, 0), self.addr(dlogits, 0)];
        // SAFETY: logits/dlogits cover n × classes, labels n, loss 1 (checked above).
        unsafe { self.device.launch("softmax_xent_f32", LaunchCfg::single_block::<256>(), &p, &addrs) }
    }
}
