//! NumPy arrays ↔ nabla tensors.

use nabla::Tensor;
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

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

/// `obj` as a tensor of `T`: one slice copy when C-contiguous, a gather in logical (C) order
/// for any other layout. `ValueError` when it is not an array of `T` (the first array of a
/// call fixes the dtype of the others).
pub fn tensor_from<T: Float>(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Tensor<T>> {
    let a = obj.cast::<PyArrayDyn<T>>().map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a numpy array of dtype {} like the call's other arrays, got {}",
            std::any::type_name::<T>()
                .replace("f32", "float32")
                .replace("f64", "float64"),
            describe(obj)
        ))
    })?;
    let ro = a
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{name}: {e}")))?;
    let shape = ro.shape().to_vec();
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
