//! Raw kernels over slices — the one place of hand-written loops. nn/ and ops/ keep the math
//! (forward and backward derivations) and call these. Each family has a file:
//!
//! - [`attention`]: the attention core of one (item, head), forward and backward, fused;
//! - [`attention_lanes`]: the same core for many short heads at once, one (item, head) per lane;
//! - [`conv`]: im2col / col2im and max pooling of one image (the data movement of `Conv2d`,
//!   whose products go through [`matmul`]);
//! - [`matmul`]: matrix products through `gemm` (transposes as strides);
//! - [`elementwise`]: exp/sigmoid/tanh/GELU/erf maps and their derivatives;
//! - [`softmax`]: row softmax, log-softmax, their backward passes, the attention score row;
//! - [`reduce`]: row sums/dots/maxima in SIMD lanes, bias-gradient column sums;
//! - [`norm`]: the row and channel statistics and backward sums of the normalization layers;
//! - [`optim`]: SGD (momentum, Nesterov), Adam and AdamW parameter updates;
//! - [`dropout`]: Bernoulli masks and their application;
//! - [`sparse`]: message passing and sparse products — CSR segment gathers (weighted per head,
//!   or plain sums), per-edge head dots, segment maxima, per-edge row sums, row scatter-adds,
//!   CSR/CSC × dense products and the segment (edge) softmax;
//! - [`transpose`]: 16 rows ↔ 16-lane vectors, the layout change of the lane-batched kernels;
//! - [`rnn`]: the recurrent ops' layout changes, squared-error loss and LSTM/GRU gate updates;
//! - [`peak`]: the machine's ceilings the benchmarks report against — FMA peak and copy
//!   bandwidth, on one and on all threads.
//!
//! Every kernel has a scalar reference (the plain loop, which is also the `Isa::Scalar` path)
//! and runs compiled for the SIMD path chosen at run time by [`isa`] (AVX-512F, AVX2+FMA, NEON
//! on aarch64, scalar). f32 is the fast path; f64 — the type of the gradient checks — takes the
//! plain loops. Each file's tests run its kernels on every path in [`isa::detected`] and compare
//! with the scalar reference. Parallel (rayon) splits depend on shapes only, never on the thread
//! count, so results are the same bits on any number of threads.

pub mod attention;
pub mod attention_lanes;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod isa;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod peak;
pub mod reduce;
pub mod rnn;
pub mod small_mm;
pub mod softmax;
pub mod sparse;
pub mod transpose;
pub use elementwise::{
    exp_f32, gelu, gelu_and_grad, gelu_and_grad_f32, gelu_grad, map_into, normal_cdf, normal_pdf,
    sigmoid, sigmoid_f32, tanh_f32, zip_into, zip_rows_into,
};
pub use matmul::{gemm, gemm_to, linear_into, matmul_into, transpose, MatLayout};
pub use reduce::{col_sums, col_sums_into};
pub use softmax::{exp_shifted, log_softmax_rows, softmax_rows, softmax_rows_backward};

/// Elementwise work below this many elements runs on one thread: spawning costs more.
pub const PAR_THRESHOLD: usize = 1 << 15;

/// How an element type reaches the SIMD kernels: f32 slices are handed to the explicit-lane
/// f32 code as themselves, f64 slices (the gradient checks) answer `None` and take the plain
/// generic loops. A supertrait of [`crate::tensor::Element`], so generic code picks the f32
/// path without `TypeId` casts or `unsafe`.
pub trait F32Path: Sized {
    /// The slice as `&[f32]` when the element type is f32.
    fn as_f32(x: &[Self]) -> Option<&[f32]>;
    /// The slice as `&mut [f32]` when the element type is f32.
    fn as_f32_mut(x: &mut [Self]) -> Option<&mut [f32]>;
    /// The vector as `Vec<Self>` when the element type is f32.
    fn from_f32_vec(v: Vec<f32>) -> Option<Vec<Self>>;
}

impl F32Path for f32 {
    #[inline(always)]
    fn as_f32(x: &[f32]) -> Option<&[f32]> {
        Some(x)
    }
    #[inline(always)]
    fn as_f32_mut(x: &mut [f32]) -> Option<&mut [f32]> {
        Some(x)
    }
    #[inline(always)]
    fn from_f32_vec(v: Vec<f32>) -> Option<Vec<f32>> {
        Some(v)
    }
}

impl F32Path for f64 {
    #[inline(always)]
    fn as_f32(_: &[f64]) -> Option<&[f32]> {
        None
    }
    #[inline(always)]
    fn as_f32_mut(_: &mut [f64]) -> Option<&mut [f32]> {
        None
    }
    #[inline(always)]
    fn from_f32_vec(_: Vec<f32>) -> Option<Vec<f64>> {
        None
    }
}

/// Loads entries `i..i + L` of `v` into one vector of `L` f32 lanes (fewer at the end of the
/// row: the rest of the lanes are 0) — the explicit-lane kernels' row access.
///
/// A whole vector is read as one (pulp's vector types have the alignment of `f32`, so the
/// slice reinterprets as vectors anywhere); only a row's tail takes pulp's partial load, which
/// is a call through a table of masks — 3–4× slower, and most of a sparse product's time when
/// every load went through it.
#[inline(always)]
pub(crate) fn load<S: pulp::Simd>(s: S, v: &[f32], i: usize) -> S::f32s {
    let end = i + S::F32_LANES;
    if end <= v.len() {
        S::as_simd_f32s(&v[i..end]).0[0]
    } else {
        s.partial_load_f32s(&v[i..])
    }
}

/// Stores the lanes of `x` that fall inside `v` from entry `i` on (a whole vector as one, a
/// row's tail through pulp's partial store).
#[inline(always)]
pub(crate) fn store<S: pulp::Simd>(s: S, v: &mut [f32], i: usize, x: S::f32s) {
    let end = i + S::F32_LANES;
    if end <= v.len() {
        S::as_mut_simd_f32s(&mut v[i..end]).0[0] = x;
    } else {
        s.partial_store_f32s(&mut v[i..], x)
    }
}

/// Keeps freed tensor buffers in the process instead of handing them back to the kernel.
///
/// A training step allocates and frees the same few-hundred-KiB activations every step. glibc
/// serves blocks above its mmap threshold (128 KiB at start) with fresh `mmap`s, so each step
/// pays a page fault and a kernel zeroing per 4 KiB page: ~15 % of a ViT step here. Raising the
/// mmap threshold to its maximum (32 MiB on 64-bit) and the trim threshold keeps those blocks on
/// the heap for reuse. Called once by the `nabla` binary; harmless to call again. No-op on other
/// C libraries.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; valid before or after other allocations.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
