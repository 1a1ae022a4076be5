//! The cpu backend's sgd ops.

use super::SgdOps;
use crate::backend::cpu::{CpuBackend, CpuBuf};
use crate::backend::{SgdParams, validate};
use crate::error::Result;
use rayon::prelude::*;

impl SgdOps for CpuBackend {
    fn sgd_update(
        &self,
        params: &mut CpuBuf,
        grads: &CpuBuf,
        velocity: &mut CpuBuf,
        len: usize,
        hp: SgdParams,
    ) -> Result<()> {
        validate::sgd_update(params, grads, velocity, len)?;
        let _timed = self.timed("sgd", "sgd_update", 0);
        sgd_update(
            &mut params.f32s_mut("parameters")?[..len],
            &grads.f32s("parameter gradients")?[..len],
            &mut velocity.f32s_mut("momentum")?[..len],
            hp,
        );
        Ok(())
    }
}

pub(crate) fn sgd_update(params: &mut [f32], grads: &[f32], velocity: &mut [f32], hp: SgdParams) {
    let SgdParams { lr, momentum, weight_decay, nesterov } = hp;
    params.par_iter_mut().zip(velocity.par_iter_mut()).zip(grads.par_iter()).with_min_len(4096).for_each(
        |((p, v), &g)| {
            let d = g + weight_decay * *p;
            *v = momentum * *v + d;
            let step = if nesterov { d + momentum * *v } else { *v };
            *p -= lr * step;
        },
    );
}
