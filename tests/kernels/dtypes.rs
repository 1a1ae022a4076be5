//! The kernel backends' dtype rule: an op's activation buffers must have the backend's storage
//! dtype (f32 at fp32 and tf32, bf16 at bf16) and every other buffer f32, else the op fails with
//! an `Error::Shape` naming the argument before anything is launched — a kernel of the other
//! element type would read or write 2 bytes per element where there are 4, or 4 where there
//! are 2.

use densenet::backend::cuda::{Device, KernelBackend};
use densenet::backend::prelude::*;
use densenet::backend::{BnRef, Category, Mat, Spatial, StatsMut, View};
use densenet::{Dtype, Error};

crate::kernel_cases! {
    buffers_of_the_wrong_dtype_are_refused => ["channel_stats_f32", "bn_relu_global_pool_fwd_f32"],
    buffers_of_the_wrong_dtype_are_refused @ bf16 => ["channel_stats_bf16", "bn_relu_global_pool_fwd_bf16"],
}

/// Requires `result` to be an `Error::Shape` whose message names `arg` and says `why`.
fn refused(result: densenet::Result<()>, arg: &str, why: &str) {
    match result {
        Err(Error::Shape(m)) => {
            println!("{m}");
            assert!(m.starts_with(&format!("{arg}: ")) && m.contains(why), "unexpected message: {m}");
        }
        other => panic!("expected a shape error naming `{arg}`, got {other:?}"),
    }
}

fn buffers_of_the_wrong_dtype_are_refused<D: Device>(device: &KernelBackend<D>) {
    let storage = device.precision().storage();
    let other = match storage {
        Dtype::F32 => Dtype::Bf16,
        Dtype::Bf16 => Dtype::F32,
    };
    let shape = Spatial { n: 3, h: 2, w: 2 };
    let (rows, c) = (shape.pixels(), 5);
    let alloc = |len: usize, dtype: Dtype| {
        let mut buf = device.alloc_as(len, dtype, Category::Workspace).unwrap();
        device.upload(&mut buf, 0, &vec![0.5; len]).unwrap();
        buf
    };
    let xm = Mat::dense(0, rows, c);
    let (x, x_other) = (alloc(rows * c, storage), alloc(rows * c, other));
    let (stats, params) = (alloc(2 * c, Dtype::F32), alloc(2 * c, Dtype::F32));
    let (mut out, mut out_bf16) = (alloc(2 * c, Dtype::F32), alloc(2 * c, Dtype::Bf16));
    let (mut pooled, mut pooled_bf16) = (alloc(shape.n * c, Dtype::F32), alloc(shape.n * c, Dtype::Bf16));
    let bn = BnRef { stats: &stats, mean: 0, var: c, params: &params, gamma: 0, beta: c };

    // The same calls with every dtype right run: the refusals below are the dtypes' alone.
    device.channel_stats(View::new(&x, xm), StatsMut { stats: &mut out, mean: 0, var: c }).unwrap();
    device.bn_relu_global_pool_fwd(View::new(&x, xm).bn_relu(bn), shape, &mut pooled).unwrap();

    let activations = format!("take {storage} activations");
    refused(
        device.channel_stats(View::new(&x_other, xm), StatsMut { stats: &mut out, mean: 0, var: c }),
        "x",
        &activations,
    );
    refused(
        device.channel_stats(View::new(&x, xm), StatsMut { stats: &mut out_bf16, mean: 0, var: c }),
        "statistics",
        "must be f32",
    );
    refused(
        device.bn_relu_global_pool_fwd(View::new(&x_other, xm).bn_relu(bn), shape, &mut pooled),
        "x",
        &activations,
    );
    refused(
        device.bn_relu_global_pool_fwd(View::new(&x, xm).bn_relu(bn), shape, &mut pooled_bf16),
        "pooled",
        "must be f32",
    );
}
