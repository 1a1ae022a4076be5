//! The `#[repr(C)]` params structs of the op families (`backend::<family>::cuda`) against their mirrors in
//! `kernels/`. A kernel takes its family's struct by value as raw bytes, so a field added,
//! removed, reordered or retyped on one side only would make it read garbage without any
//! error. For every struct this test reads the CUDA definition (field names and C types) and
//! the `static_assert(sizeof(...) == N)` right after it, and checks that the Rust struct has
//! the same fields in the same order, of the matching types, at the offsets C gives them, and
//! N bytes in all. The `static_assert` holds nvcc, NVRTC and the emulator's C++ build to the
//! same N, so both sides are pinned to one number written down once.

use densenet::backend::bn_backward::{BnElementwiseParams, BnFoldParams};
use densenet::backend::conv::ConvParams;
use densenet::backend::conv1x1::Conv1x1Params;
use densenet::backend::conv3x3::Conv3x3Params;
use densenet::backend::cuda::{SplitSumParams, TileSumsParams};
use densenet::backend::linear::LinearParams;
use densenet::backend::loss::SoftmaxXentParams;
use densenet::backend::pool::{GlobalPoolParams, MaxPoolParams};
use densenet::backend::sgd::SgdKernelParams;
use densenet::backend::stats::{BnAffineParams, ChannelStatsParams, RunningStatsParams};
use densenet::backend::transition::TransitionParams;
use densenet::backend::unfused::{UnfusedParams, UnfusedPoolParams};
use std::collections::BTreeSet;
use std::fs;
use std::mem::{offset_of, size_of};
use std::path::Path;

/// A struct's layout: total size and (name, offset, Rust type name) per field, in order.
#[derive(Debug, PartialEq)]
struct Layout {
    size: usize,
    fields: Vec<(String, usize, String)>,
}

fn type_name_of<S, F>(_field: fn(&S) -> &F) -> String {
    std::any::type_name::<F>().to_string()
}

/// The Rust side of a struct, its fields listed in declaration order (a field missing from
/// the list still shows, as a size that differs from the CUDA one).
macro_rules! rust_layout {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        (
            stringify!($ty),
            Layout {
                size: size_of::<$ty>(),
                fields: vec![$((
                    stringify!($field).to_string(),
                    offset_of!($ty, $field),
                    type_name_of(|s: &$ty| &s.$field),
                )),*],
            },
        )
    };
}

fn rust_layouts() -> Vec<(&'static str, Layout)> {
    vec![
        rust_layout!(ConvParams {
            n,
            h,
            w,
            oh,
            ow,
            c_in,
            c_out,
            kernel,
            stride,
            pad,
            ld_x,
            ld_y,
            split_pixels
        }),
        rust_layout!(Conv1x1Params { pixels, cin, cout, ld_x, ld_z, ld_dx, accumulate, splits, run }),
        rust_layout!(Conv3x3Params { n, h, w, c_in, c_out, ld_z, ld_y, ld_g, tile, split_pixels }),
        rust_layout!(SplitSumParams { len, splits, accumulate }),
        rust_layout!(ChannelStatsParams { rows, cols, ld, splits, rows_per_split }),
        rust_layout!(RunningStatsParams { channels, count, momentum }),
        rust_layout!(BnAffineParams { channels }),
        rust_layout!(BnElementwiseParams { rows, cols, ld_g, ld_x, count }),
        rust_layout!(BnFoldParams { channels, count, correct }),
        rust_layout!(SoftmaxXentParams { rows, classes }),
        rust_layout!(SgdKernelParams { len, lr, momentum, weight_decay, nesterov }),
        rust_layout!(LinearParams { n, k, out }),
        rust_layout!(MaxPoolParams { n, h, w, out_h, out_w, cols, ld_t, ld_y, ld_g, tile_rows }),
        rust_layout!(GlobalPoolParams { n, image, cols, ld_x, ld_dx, tile_rows }),
        rust_layout!(TileSumsParams { tiles, width }),
        rust_layout!(TransitionParams { images, h, w, cin, cout, ld_x, ld_y, ld_dx, splits, run }),
        rust_layout!(UnfusedParams { rows, cols, ld_x, ld_y, accumulate, tile_rows }),
        rust_layout!(UnfusedPoolParams { n, h, w, out_h, out_w, win_h, win_w, cols, ld_x, ld_y, ld_dx }),
    ]
}

/// Every file of a directory with one of the extensions, with its text.
fn sources(dir: &str, extensions: &[&str]) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for path in fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| extensions.iter().any(|e| x == *e)) {
                let name = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
                out.push((name, fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Size, alignment and Rust counterpart of the C field types the params structs use.
fn c_type(ty: &str) -> (usize, &'static str) {
    match ty {
        "unsigned int" => (4, "u32"),
        "unsigned long long" => (8, "u64"),
        "float" => (4, "f32"),
        _ => panic!("C type {ty:?} has no Rust counterpart in this test"),
    }
}

/// The CUDA side of `name`: its one definition in `kernels/`, laid out by C's rules (every
/// field type is aligned to its size), and the size its `static_assert` states.
fn cuda_layout(kernels: &[(String, String)], name: &str) -> (Layout, usize) {
    let head = format!("struct {name} {{");
    let defs: Vec<(&str, &str)> = kernels
        .iter()
        .flat_map(|(file, text)| text.split("\n").map(move |line| (file.as_str(), line)))
        .filter(|&(_, line)| line == head)
        .collect();
    assert_eq!(defs.len(), 1, "{name}: one definition in kernels/, found {defs:?}");
    let text = &kernels.iter().find(|(f, _)| f == defs[0].0).unwrap().1;
    let mut lines = text.split('\n').skip_while(|l| *l != head).skip(1);
    let (mut offset, mut align, mut fields) = (0usize, 1, Vec::new());
    for line in lines.by_ref() {
        if line == "};" {
            break;
        }
        let decl = line.split("//").next().unwrap().trim();
        if decl.is_empty() {
            continue;
        }
        let decl = decl.strip_suffix(';').unwrap_or_else(|| panic!("{name}: unexpected line {line:?}"));
        let (ty, field) = decl.rsplit_once(' ').unwrap_or_else(|| panic!("{name}: unexpected line {line:?}"));
        let (size, rust) = c_type(ty.trim());
        offset = offset.next_multiple_of(size);
        fields.push((field.to_string(), offset, rust.to_string()));
        offset += size;
        align = align.max(size);
    }
    let assert = lines.next().unwrap_or_default();
    let asserted = assert
        .strip_prefix(&format!("static_assert(sizeof({name}) == "))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name}: expected static_assert(sizeof({name}) == N, ...) after it"));
    (Layout { size: offset.next_multiple_of(align), fields }, asserted)
}

#[test]
fn params_structs_match_their_cuda_mirrors() {
    let kernels = sources("kernels", &["cu", "cuh"]);
    for (name, rust) in rust_layouts() {
        let (cuda, asserted) = cuda_layout(&kernels, name);
        assert_eq!(rust, cuda, "{name}: the Rust struct (left) and the CUDA struct (right) differ");
        assert_eq!(rust.size, asserted, "{name}: size_of differs from the static_assert in kernels/");
    }
}

/// Every struct `kernel_params!` declares is checked above: a new one cannot be left out.
#[test]
fn every_params_struct_is_checked() {
    let declared: BTreeSet<String> = sources("src/backend", &["rs"])
        .iter()
        .flat_map(|(_, text)| {
            text.split("kernel_params!(").skip(1).map(|rest| rest.split(')').next().unwrap())
        })
        .flat_map(|list| list.split(',').map(|n| n.trim().to_string()))
        .filter(|n| !n.is_empty())
        .collect();
    let checked: BTreeSet<String> = rust_layouts().into_iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(declared, checked);
}
