//! NumPy arrays ↔ nabla tensors.
//!
//! In: [`Input`] reads a C-contiguous array in place (a [`TensorView`] of NumPy's buffer) and
//! gathers any other layout into one owned copy in C order (or converts another float type,
//! [`Input::converted`]: a copy too); [`tensor_from`] copies into an
//! owned [`Tensor`], for the arguments nabla keeps (weights, a tape's inputs). Every copy is
//! counted ([`copies`], `nabla._nabla._copies()`), so that a test can tell the two apart.
//!
//! A borrowed buffer is read with the GIL released: the call holds a reference to the array
//! (it cannot be freed or resized: NumPy refuses to resize an array others refer to) and
//! rust-numpy's read-only borrow (no Rust code writes to it meanwhile). Python code writing to
//! the same array from another thread during the call races with nabla's reads exactly as it
//! would with NumPy's own GIL-free loops: the values read are unspecified, memory stays valid.

use nabla::{Tensor, TensorView};
use numpy::{
    PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Input arrays copied (into an owned tensor, or gathered from a layout other than C order)
/// since the module was loaded.
static COPIES: AtomicUsize = AtomicUsize::new(0);

/// The number of input arrays copied so far (`nabla._nabla._copies()`, for the tests).
pub fn copies() -> usize {
    COPIES.load(Ordering::Relaxed)
}

/// The element types both nabla and NumPy compute with.
pub trait Float: nabla::Element + numpy::Element {}
impl Float for f32 {}
impl Float for f64 {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
}

/// What `obj` is, for an error message: `an array of dtype int64`, `a list`.
fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<PyUntypedArray>() {
        Ok(a) => format!(
            "an array of dtype {}",
            a.dtype()
                .str()
                .map(|s| s.to_string())
                .unwrap_or_else(|_| "?".into())
        ),
        Err(_) => format!(
            "a {}",
            obj.get_type()
                .name()
                .map(|s| s.to_string())
                .unwrap_or_else(|_| "?".into())
        ),
    }
}

/// The dtype of the float array `obj` (`ValueError` for anything else).
pub fn dtype_of(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<DType> {
    if obj.cast::<PyArrayDyn<f32>>().is_ok() {
        Ok(DType::F32)
    } else if obj.cast::<PyArrayDyn<f64>>().is_ok() {
        Ok(DType::F64)
    } else {
        Err(PyValueError::new_err(format!(
            "{name} must be a float32 or float64 numpy array, got {} (convert with np.asarray({name}, dtype=np.float64))",
            describe(obj)
        )))
    }
}

/// `obj` as a read-only array of `T`; `ValueError` when it is not an array of `T` (the first
/// array of a call fixes the dtype of the others) or cannot be borrowed.
fn readonly<'py, T: Float>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let a = obj.cast::<PyArrayDyn<T>>().map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a numpy array of dtype {} like the call's other arrays, got {}",
            std::any::type_name::<T>()
                .replace("f32", "float32")
                .replace("f64", "float64"),
            describe(obj)
        ))
    })?;
    a.try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

/// An input array as nabla reads it: NumPy's own buffer when C-contiguous, else a copy
/// gathered in logical (C) order.
pub struct Input<'py, T: Float> {
    shape: Vec<usize>,
    data: InputData<'py, T>,
}

enum InputData<'py, T: Float> {
    Borrowed(PyReadonlyArrayDyn<'py, T>),
    Gathered(Vec<T>),
}

impl<'py, T: Float> Input<'py, T> {
    pub fn new(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Self> {
        let ro = readonly::<T>(obj, name)?;
        let shape = ro.shape().to_vec();
        let data = if ro.is_c_contiguous() && ro.as_slice().is_ok() {
            InputData::Borrowed(ro)
        } else {
            COPIES.fetch_add(1, Ordering::Relaxed);
            InputData::Gathered(ro.as_array().iter().copied().collect())
        };
        Ok(Input { shape, data })
    }
    /// An array of another float type `S`, converted to `T` element by element in logical
    /// order: always one copy (counted), whatever the layout.
    pub fn converted<S: Float>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Self> {
        let ro = readonly::<S>(obj, name)?;
        COPIES.fetch_add(1, Ordering::Relaxed);
        let data = ro.as_array().iter().map(|&v| T::c(v.as_f64())).collect();
        Ok(Input {
            shape: ro.shape().to_vec(),
            data: InputData::Gathered(data),
        })
    }
    /// The elements in C order, borrowed (`Send`: readable with the GIL released).
    pub fn view(&self) -> TensorView<'_, T> {
        let data = match &self.data {
            InputData::Borrowed(ro) => ro.as_slice().expect("checked C-contiguous in new"),
            InputData::Gathered(v) => v,
        };
        TensorView::new(&self.shape, data).expect("NumPy's shape matches its buffer")
    }
}

/// `obj` as an owned tensor of `T` (one copy: a slice copy when C-contiguous, a gather in
/// logical order for any other layout), for arguments nabla keeps.
pub fn tensor_from<T: Float>(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Tensor<T>> {
    let ro = readonly::<T>(obj, name)?;
    let shape = ro.shape().to_vec();
    COPIES.fetch_add(1, Ordering::Relaxed);
    let data = match ro.as_slice() {
        Ok(s) if ro.is_c_contiguous() => s.to_vec(),
        _ => ro.as_array().iter().copied().collect(),
    };
    Tensor::new(&shape, data).map_err(crate::to_pyerr)
}

/// A tensor as a NumPy array that owns the tensor's buffer (no copy).
pub fn out_array<'py, T: Float>(py: Python<'py>, t: Tensor<T>) -> PyResult<Bound<'py, PyAny>> {
    let shape = t.shape().to_vec();
    let flat = PyArray1::from_vec(py, t.into_data());
    Ok(flat.reshape(shape)?.into_any())
}
