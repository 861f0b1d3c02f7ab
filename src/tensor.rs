//! Dense, row-major tensors generic over the element type.
//!
//! Training runs in `f32`; gradient checks run the *same* op code in `f64` (every op, kernel
//! and layer is generic over [`Element`]).

use crate::error::{NablaError, Result};
use crate::shape_err;
use std::fmt::{Debug, Display};

/// Floating-point element type of a tensor: `f32` for training, `f64` for gradient checks.
pub trait Element:
    num_traits::Float
    + num_traits::NumAssign
    + std::iter::Sum
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
    + crate::kernels::F32Path
{
    const DTYPE: &'static str;
    /// Conversion from an f64 constant.
    fn c(x: f64) -> Self;
    fn as_f64(self) -> f64;
    /// Error function, needed by the exact GELU.
    fn erf(self) -> Self;
}

impl Element for f32 {
    const DTYPE: &'static str = "f32";
    #[inline]
    fn c(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn as_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn erf(self) -> Self {
        libm::erff(self)
    }
}

impl Element for f64 {
    const DTYPE: &'static str = "f64";
    #[inline]
    fn c(x: f64) -> Self {
        x
    }
    #[inline]
    fn as_f64(self) -> f64 {
        self
    }
    #[inline]
    fn erf(self) -> Self {
        libm::erf(self)
    }
}

/// A borrowed dense row-major tensor: a shape and its elements in C order, read in place. What
/// read-only entry points take (as `impl Into<TensorView>`), so that an owned [`Tensor`] and
/// memory nabla does not own — a NumPy array's buffer in the Python module — go the same way,
/// without a copy.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a, T = f32> {
    shape: &'a [usize],
    data: &'a [T],
}

impl<'a, T: Element> TensorView<'a, T> {
    /// A view of `data` as `shape`, checking that the element count matches.
    pub fn new(shape: &'a [usize], data: &'a [T]) -> Result<Self> {
        if numel(shape) != data.len() {
            return Err(shape_err!(
                "TensorView::new",
                "shape {:?} needs {} elements, got {}",
                shape,
                numel(shape),
                data.len()
            ));
        }
        Ok(TensorView { shape, data })
    }
    pub fn shape(&self) -> &'a [usize] {
        self.shape
    }
    pub fn data(&self) -> &'a [T] {
        self.data
    }
    /// An owned copy (for what must keep the values: a recording tape's input).
    pub fn to_tensor(&self) -> Tensor<T> {
        Tensor::from_parts(self.shape.to_vec(), self.data.to_vec())
    }
    /// Error if any element is NaN or infinite; `what` names the tensor in the message.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        if let Some(i) = self.data.iter().position(|x| !x.is_finite()) {
            return Err(NablaError::NonFinite(format!(
                "{what} has a non-finite value {} at flat index {i} (shape {:?})",
                self.data[i], self.shape
            )));
        }
        Ok(())
    }
}

impl<'a, T: Element> From<&'a Tensor<T>> for TensorView<'a, T> {
    fn from(t: &'a Tensor<T>) -> Self {
        t.view()
    }
}

/// A dense row-major tensor.
#[derive(Clone, PartialEq)]
pub struct Tensor<T = f32> {
    shape: Vec<usize>,
    data: Vec<T>,
}

impl<T: Element> Debug for Tensor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.data.len().min(8);
        write!(
            f,
            "Tensor<{}>{:?} {:?}{}",
            T::DTYPE,
            self.shape,
            &self.data[..n],
            if self.data.len() > n { " …" } else { "" }
        )
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl<T: Element> Tensor<T> {
    /// Builds a tensor, checking that `data.len()` matches the shape.
    pub fn new(shape: &[usize], data: Vec<T>) -> Result<Self> {
        if numel(shape) != data.len() {
            return Err(shape_err!(
                "Tensor::new",
                "shape {:?} needs {} elements, got {}",
                shape,
                numel(shape),
                data.len()
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
        })
    }
    /// Internal constructor for code that computed `data` for `shape` itself.
    pub(crate) fn from_parts(shape: Vec<usize>, data: Vec<T>) -> Self {
        debug_assert_eq!(numel(&shape), data.len());
        Tensor { shape, data }
    }
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor::from_parts(shape.to_vec(), vec![T::zero(); numel(shape)])
    }
    pub fn ones(shape: &[usize]) -> Self {
        Self::full(shape, T::one())
    }
    pub fn full(shape: &[usize], v: T) -> Self {
        Tensor::from_parts(shape.to_vec(), vec![v; numel(shape)])
    }
    pub fn scalar(v: T) -> Self {
        Tensor::from_parts(vec![], vec![v])
    }
    pub fn from_fn(shape: &[usize], f: impl FnMut(usize) -> T) -> Self {
        Tensor::from_parts(shape.to_vec(), (0..numel(shape)).map(f).collect())
    }
    /// From f64 values (convenient for literals in tests and exercises).
    pub fn from_f64(shape: &[usize], data: &[f64]) -> Result<Self> {
        Self::new(shape, data.iter().map(|&x| T::c(x)).collect())
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    /// Size of axis `i`; negative indices count from the end.
    pub fn dim(&self, i: isize) -> usize {
        let n = self.shape.len() as isize;
        self.shape[(if i < 0 { n + i } else { i }) as usize]
    }
    pub fn data(&self) -> &[T] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
    pub fn into_data(self) -> Vec<T> {
        self.data
    }
    /// The single value of a one-element tensor.
    pub fn item(&self) -> T {
        self.data[0]
    }
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.data.len() {
            return Err(shape_err!(
                "reshape",
                "cannot reshape {:?} ({} elements) to {:?}",
                self.shape,
                self.data.len(),
                shape
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }
    pub fn cast<U: Element>(&self) -> Tensor<U> {
        Tensor::from_parts(
            self.shape.clone(),
            self.data.iter().map(|&x| U::c(x.as_f64())).collect(),
        )
    }
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.data.iter().map(|x| x.as_f64()).collect()
    }
    pub fn map(&self, f: impl Fn(T) -> T) -> Self {
        Tensor::from_parts(
            self.shape.clone(),
            self.data.iter().map(|&x| f(x)).collect(),
        )
    }
    /// `self += alpha * other` (same shape).
    pub fn axpy(&mut self, alpha: T, other: &Tensor<T>) -> Result<()> {
        self.check_same_shape("axpy", other)?;
        for (a, &b) in self.data.iter_mut().zip(&other.data) {
            *a += alpha * b;
        }
        Ok(())
    }
    pub fn fill(&mut self, v: T) {
        self.data.iter_mut().for_each(|x| *x = v);
    }
    pub fn check_same_shape(&self, op: &str, other: &Tensor<T>) -> Result<()> {
        if self.shape != other.shape {
            return Err(shape_err!(
                op,
                "shapes differ: {:?} vs {:?}",
                self.shape,
                other.shape
            ));
        }
        Ok(())
    }
    pub fn sum_all(&self) -> T {
        self.data.iter().copied().sum()
    }
    /// Euclidean (Frobenius) norm, accumulated in f64.
    pub fn norm(&self) -> f64 {
        self.data
            .iter()
            .map(|x| {
                let v = x.as_f64();
                v * v
            })
            .sum::<f64>()
            .sqrt()
    }
    pub fn all_finite(&self) -> bool {
        self.data.iter().all(|x| x.is_finite())
    }
    /// Error if any element is NaN or infinite; `what` names the tensor in the message.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        self.view().check_finite(what)
    }
    /// The tensor borrowed as a [`TensorView`].
    pub fn view(&self) -> TensorView<'_, T> {
        TensorView {
            shape: &self.shape,
            data: &self.data,
        }
    }
    /// Maximum absolute elementwise difference (f64).
    pub fn max_abs_diff(&self, other: &Tensor<T>) -> Result<f64> {
        self.check_same_shape("max_abs_diff", other)?;
        Ok(self
            .data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a.as_f64() - b.as_f64()).abs())
            .fold(0.0, f64::max))
    }
    /// Rows `[start, end)` of the leading axis.
    pub fn slice_rows(&self, start: usize, end: usize) -> Result<Self> {
        if self.shape.is_empty() || start > end || end > self.shape[0] {
            return Err(shape_err!(
                "slice_rows",
                "rows {start}..{end} out of range for shape {:?}",
                self.shape
            ));
        }
        let row = numel(&self.shape[1..]);
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Ok(Tensor::from_parts(
            shape,
            self.data[start * row..end * row].to_vec(),
        ))
    }
    /// 2-D transpose.
    pub fn t(&self) -> Result<Self> {
        if self.ndim() != 2 {
            return Err(shape_err!(
                "t",
                "expected a 2-D tensor, got {:?}",
                self.shape
            ));
        }
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![T::zero(); r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        Ok(Tensor::from_parts(vec![c, r], out))
    }
    /// Nested `Vec`s for JSON output of a 1-D or 2-D tensor (higher ranks are flattened to 2-D).
    pub fn to_json(&self) -> serde_json::Value {
        let v: Vec<f64> = self.to_f64_vec();
        match self.ndim() {
            0 => serde_json::json!(v[0]),
            1 => serde_json::json!(v),
            _ => {
                let c = *self.shape.last().unwrap();
                let rows: Vec<Vec<f64>> = v.chunks(c.max(1)).map(|r| r.to_vec()).collect();
                serde_json::json!(rows)
            }
        }
    }
}
