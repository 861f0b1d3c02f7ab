//! Layers as functions with a backward: each returns `(y, backward)`, and `backward(dy)` the
//! gradients of the layer's inputs — nabla's fused ops on its tape, so that a student can check
//! an implementation of their own against them. `backward` runs the forward again on a fresh
//! tape (it can be called any number of times, with any `dy`).

use crate::array::{dtype_of, out_array, tensor_from, DType, Float};
use crate::{detached, to_pyerr};
use nabla::graph::Graph;
use nabla::nn::attention::{scaled_dot_product_attention, AttnMask};
use nabla::nn::graph_ops::{max_aggregate, uniform_weights, weighted_aggregate};
use nabla::nn::norm::{batch_norm, group_norm, instance_norm, layer_norm, BatchNormMode};
use nabla::{Tape, Tensor, Var};
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::sync::Arc;

/// The layer applied to its inputs on a tape (`None` for an absent optional input).
type Build<T> = Arc<dyn Fn(&mut Tape<T>, &[Option<Var>]) -> nabla::Result<Var> + Send + Sync>;

/// A layer call's output and the gradients of its inputs.
type Outputs<T> = (Tensor<T>, Vec<Option<Tensor<T>>>);

/// One layer call: its inputs and the layer.
struct Layer<T: Float> {
    inputs: Vec<Option<Tensor<T>>>,
    build: Build<T>,
}

impl<T: Float> Layer<T> {
    /// The output, and with `dy` the gradient of every given input (zeros where none flows).
    fn run(&self, dy: Option<Tensor<T>>) -> nabla::Result<Outputs<T>> {
        let mut tape = Tape::<T>::new();
        let vars: Vec<Option<Var>> = self
            .inputs
            .iter()
            .map(|t| t.as_ref().map(|t| tape.input(t.clone())))
            .collect();
        let y = (self.build)(&mut tape, &vars)?;
        let out = tape.value(y).clone();
        let Some(dy) = dy else {
            return Ok((out, Vec::new()));
        };
        tape.backward_with(y, dy)?;
        let grads = vars
            .iter()
            .map(|v| {
                v.map(|v| {
                    tape.grad(v)
                        .cloned()
                        .unwrap_or_else(|| Tensor::zeros(tape.shape(v)))
                })
            })
            .collect();
        Ok((out, grads))
    }
}

enum AnyLayer {
    F32(Layer<f32>),
    F64(Layer<f64>),
}

/// The backward of one layer call: `backward(dy)` → the gradients of the call's inputs, in
/// their order (None for an input that was not given).
#[pyclass(module = "nabla", frozen)]
pub struct Backward {
    name: &'static str,
    /// Input names, for the error messages and the repr.
    names: Vec<&'static str>,
    layer: AnyLayer,
}

fn grads_tuple<'py, T: Float>(
    py: Python<'py>,
    grads: Vec<Option<Tensor<T>>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let mut items = Vec::with_capacity(grads.len());
    for g in grads {
        items.push(match g {
            Some(t) => out_array(py, t)?,
            None => py.None().into_bound(py),
        });
    }
    PyTuple::new(py, items)
}

fn backward_typed<'py, T: Float>(
    py: Python<'py>,
    layer: &Layer<T>,
    name: &str,
    dy: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let dy = tensor_from::<T>(dy, &format!("dy of {name}"))?;
    let (_, grads) = detached(py, || {
        dy.check_finite("dy")?;
        layer.run(Some(dy))
    })?;
    // One input (message passing): the gradient itself; otherwise a tuple.
    if grads.len() == 1 {
        let g = grads.into_iter().next().flatten();
        return match g {
            Some(t) => out_array(py, t),
            None => Ok(py.None().into_bound(py)),
        };
    }
    Ok(grads_tuple(py, grads)?.into_any())
}

#[pymethods]
impl Backward {
    /// backward(dy) -> the gradients of the inputs (a tuple, or one array for one input)
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        dy: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match &self.layer {
            AnyLayer::F32(l) => backward_typed(py, l, self.name, dy),
            AnyLayer::F64(l) => backward_typed(py, l, self.name, dy),
        }
    }
    fn __repr__(&self) -> String {
        format!(
            "<backward of {}: dy -> d({})>",
            self.name,
            self.names.join(", ")
        )
    }
}

/// Runs the forward of `layer` and returns `(y, backward)`.
fn forward_pair<'py, T: Float>(
    py: Python<'py>,
    name: &'static str,
    names: Vec<&'static str>,
    layer: Layer<T>,
    wrap: fn(Layer<T>) -> AnyLayer,
) -> PyResult<Bound<'py, PyTuple>> {
    let (y, _) = detached(py, || {
        for (n, t) in names.iter().zip(&layer.inputs) {
            if let Some(t) = t {
                t.check_finite(n)?;
            }
        }
        layer.run(None)
    })?;
    let b = Backward {
        name,
        names,
        layer: wrap(layer),
    };
    PyTuple::new(py, [out_array(py, y)?, Bound::new(py, b)?.into_any()])
}

/// The optional inputs of a call as tensors of `T`.
fn opt_tensor<T: Float>(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<Tensor<T>>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(tensor_from::<T>(o, name)?)),
        _ => Ok(None),
    }
}

/// Dispatches a layer call on the dtype of `x`: `$f::<T>(...)` for T = f32 or f64.
macro_rules! by_dtype {
    ($x:expr, $name:expr, $f:ident($($arg:expr),*)) => {
        match dtype_of($x, $name)? {
            DType::F32 => $f::<f32>($($arg),*, AnyLayer::F32),
            DType::F64 => $f::<f64>($($arg),*, AnyLayer::F64),
        }
    };
}

fn layer_norm_typed<'py, T: Float>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: Option<&Bound<'py, PyAny>>,
    bias: Option<&Bound<'py, PyAny>>,
    eps: f64,
    normalized_ndim: Option<usize>,
    wrap: fn(Layer<T>) -> AnyLayer,
) -> PyResult<Bound<'py, PyTuple>> {
    let x = tensor_from::<T>(x, "x")?;
    let w = opt_tensor::<T>(weight, "weight")?;
    let b = opt_tensor::<T>(bias, "bias")?;
    // PyTorch's normalized_shape is weight.shape; without an affine map, the last axis.
    let nd = normalized_ndim
        .or(w.as_ref().map(|w| w.ndim()))
        .or(b.as_ref().map(|b| b.ndim()))
        .unwrap_or(1);
    let build: Build<T> =
        Arc::new(move |tape, v| layer_norm(tape, v[0].expect("x"), nd, v[1], v[2], eps, None));
    let layer = Layer {
        inputs: vec![Some(x), w, b],
        build,
    };
    forward_pair(py, "layer_norm", vec!["x", "weight", "bias"], layer, wrap)
}

/// layer_norm(x, weight=None, bias=None, eps=1e-5, normalized_ndim=None) -> (y, backward)
///
/// nabla's fused LayerNorm over the trailing axes (PyTorch's normalized_shape = weight.shape;
/// `normalized_ndim` when there is no weight, default 1): y = γ (x − μ)/√(σ² + ε) + β with the
/// population variance. `backward(dy)` -> (dx, dweight, dbias) (None for an absent weight or
/// bias).
///
/// The arrays are copied once into the call's tensors: `backward` reruns the layer from them
/// after the call has returned (a view of the caller's buffer could not outlive the call).
#[pyfunction(name = "layer_norm")]
#[pyo3(signature = (x, weight = None, bias = None, eps = 1e-5, normalized_ndim = None))]
fn layer_norm_py<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: Option<&Bound<'py, PyAny>>,
    bias: Option<&Bound<'py, PyAny>>,
    eps: f64,
    normalized_ndim: Option<usize>,
) -> PyResult<Bound<'py, PyTuple>> {
    by_dtype!(
        x,
        "x",
        layer_norm_typed(py, x, weight, bias, eps, normalized_ndim)
    )
}

/// Which per-channel normalization.
#[derive(Clone, Copy)]
enum ChannelNorm {
    Batch,
    Group(usize),
    Instance,
}

fn channel_norm_typed<'py, T: Float>(
    py: Python<'py>,
    kind: ChannelNorm,
    x: &Bound<'py, PyAny>,
    weight: Option<&Bound<'py, PyAny>>,
    bias: Option<&Bound<'py, PyAny>>,
    eps: f64,
    wrap: fn(Layer<T>) -> AnyLayer,
) -> PyResult<Bound<'py, PyTuple>> {
    let x = tensor_from::<T>(x, "x")?;
    let w = opt_tensor::<T>(weight, "weight")?;
    let b = opt_tensor::<T>(bias, "bias")?;
    let (name, build): (&'static str, Build<T>) = match kind {
        ChannelNorm::Batch => (
            "batch_norm",
            Arc::new(move |tape, v| {
                // Training mode: the batch's own statistics (no running statistics here).
                let mode = BatchNormMode::Train {
                    running: None,
                    factor: 0.1,
                };
                batch_norm(tape, v[0].expect("x"), v[1], v[2], mode, eps, None)
            }),
        ),
        ChannelNorm::Group(g) => (
            "group_norm",
            Arc::new(move |tape, v| group_norm(tape, v[0].expect("x"), g, v[1], v[2], eps, None)),
        ),
        ChannelNorm::Instance => (
            "instance_norm",
            Arc::new(move |tape, v| instance_norm(tape, v[0].expect("x"), v[1], v[2], eps, None)),
        ),
    };
    let layer = Layer {
        inputs: vec![Some(x), w, b],
        build,
    };
    forward_pair(py, name, vec!["x", "weight", "bias"], layer, wrap)
}

/// batch_norm(x, weight=None, bias=None, eps=1e-5) -> (y, backward)
///
/// nabla's fused BatchNorm in training mode on x (N, C, ...): per channel, statistics over the
/// batch and the trailing axes; weight, bias (C). `backward(dy)` -> (dx, dweight, dbias).
///
/// The arrays are copied once into the call's tensors: `backward` reruns the layer from them
/// after the call has returned (a view of the caller's buffer could not outlive the call).
#[pyfunction(name = "batch_norm")]
#[pyo3(signature = (x, weight = None, bias = None, eps = 1e-5))]
fn batch_norm_py<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: Option<&Bound<'py, PyAny>>,
    bias: Option<&Bound<'py, PyAny>>,
    eps: f64,
) -> PyResult<Bound<'py, PyTuple>> {
    by_dtype!(
        x,
        "x",
        channel_norm_typed(py, ChannelNorm::Batch, x, weight, bias, eps)
    )
}

/// group_norm(x, groups, weight=None, bias=None, eps=1e-5) -> (y, backward)
///
/// nabla's fused GroupNorm on x (N, C, ...): the C channels in `groups` consecutive groups, each
/// normalized per sample; weight, bias (C). `backward(dy)` -> (dx, dweight, dbias).
///
/// The arrays are copied once into the call's tensors: `backward` reruns the layer from them
/// after the call has returned (a view of the caller's buffer could not outlive the call).
#[pyfunction(name = "group_norm")]
#[pyo3(signature = (x, groups, weight = None, bias = None, eps = 1e-5))]
fn group_norm_py<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    groups: usize,
    weight: Option<&Bound<'py, PyAny>>,
    bias: Option<&Bound<'py, PyAny>>,
    eps: f64,
) -> PyResult<Bound<'py, PyTuple>> {
    by_dtype!(
        x,
        "x",
        channel_norm_typed(py, ChannelNorm::Group(groups), x, weight, bias, eps)
    )
}

/// instance_norm(x, weight=None, bias=None, eps=1e-5) -> (y, backward)
///
/// nabla's fused InstanceNorm on x (N, C, ...): per sample and channel; weight, bias (C).
/// `backward(dy)` -> (dx, dweight, dbias).
///
/// The arrays are copied once into the call's tensors: `backward` reruns the layer from them
/// after the call has returned (a view of the caller's buffer could not outlive the call).
#[pyfunction(name = "instance_norm")]
#[pyo3(signature = (x, weight = None, bias = None, eps = 1e-5))]
fn instance_norm_py<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: Option<&Bound<'py, PyAny>>,
    bias: Option<&Bound<'py, PyAny>>,
    eps: f64,
) -> PyResult<Bound<'py, PyTuple>> {
    by_dtype!(
        x,
        "x",
        channel_norm_typed(py, ChannelNorm::Instance, x, weight, bias, eps)
    )
}

/// A boolean mask array (True = that position may not be attended to).
fn bool_mask(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<(Vec<usize>, Vec<bool>)> {
    let a = obj.cast::<PyArrayDyn<bool>>().map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a numpy array of dtype bool (True = masked out)"
        ))
    })?;
    let ro = a
        .try_readonly()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((ro.shape().to_vec(), ro.as_array().iter().copied().collect()))
}

fn attention_typed<'py, T: Float>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    mask: Option<AttnMask>,
    wrap: fn(Layer<T>) -> AnyLayer,
) -> PyResult<Bound<'py, PyTuple>> {
    let (q, k, v) = (
        tensor_from::<T>(q, "q")?,
        tensor_from::<T>(k, "k")?,
        tensor_from::<T>(v, "v")?,
    );
    let build: Build<T> = Arc::new(move |tape, vars| {
        let (o, _) = scaled_dot_product_attention(
            tape,
            vars[0].expect("q"),
            vars[1].expect("k"),
            vars[2].expect("v"),
            mask.as_ref(),
            false,
        )?;
        Ok(o)
    });
    let layer = Layer {
        inputs: vec![Some(q), Some(k), Some(v)],
        build,
    };
    forward_pair(py, "attention", vec!["q", "k", "v"], layer, wrap)
}

/// attention(q, k, v, mask=None, key_padding_mask=None) -> (o, backward)
///
/// nabla's fused scaled-dot-product attention o = softmax(q kᵀ / √d) v on q (B, H, Tq, d),
/// k, v (B, H, Tk, d). mask: bool (Tq, Tk) or (B, Tq, Tk), True = query i may not attend to
/// key j (PyTorch nn.MultiheadAttention's polarity); key_padding_mask: bool (B, Tk), True =
/// padding. `backward(do)` -> (dq, dk, dv).
///
/// The arrays are copied once into the call's tensors: `backward` reruns the layer from them
/// after the call has returned (a view of the caller's buffer could not outlive the call).
#[pyfunction]
#[pyo3(signature = (q, k, v, mask = None, key_padding_mask = None))]
fn attention<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    key_padding_mask: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let m = match (
        mask.filter(|m| !m.is_none()),
        key_padding_mask.filter(|m| !m.is_none()),
    ) {
        (Some(_), Some(_)) => {
            return Err(PyValueError::new_err(
                "give mask or key_padding_mask, not both",
            ))
        }
        (Some(m), None) => {
            let (shape, data) = bool_mask(m, "mask")?;
            Some(match shape.len() {
                2 => AttnMask::Shared(data),
                3 => AttnMask::Dense(data),
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "mask must be (Tq, Tk) or (B, Tq, Tk), got shape {shape:?}"
                    )))
                }
            })
        }
        (None, Some(m)) => {
            let (shape, data) = bool_mask(m, "key_padding_mask")?;
            if shape.len() != 2 {
                return Err(PyValueError::new_err(format!(
                    "key_padding_mask must be (B, Tk), got shape {shape:?}"
                )));
            }
            Some(AttnMask::KeyPadding(data))
        }
        (None, None) => None,
    };
    by_dtype!(q, "q", attention_typed(py, q, k, v, m))
}

/// How incoming messages are combined.
#[derive(Clone, Copy, Debug)]
enum Aggr {
    Add,
    Mean,
    Max,
}

fn message_passing_typed<'py, T: Float>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    graph: Graph,
    aggr: Aggr,
    wrap: fn(Layer<T>) -> AnyLayer,
) -> PyResult<Bound<'py, PyTuple>> {
    let x = tensor_from::<T>(x, "x")?;
    if x.ndim() != 2 || x.dim(0) != graph.num_nodes() {
        return Err(PyValueError::new_err(format!(
            "x must be (num_nodes, features) with num_nodes = {}, got shape {:?}",
            graph.num_nodes(),
            x.shape()
        )));
    }
    let build: Build<T> = Arc::new(move |tape, v| {
        let x = v[0].expect("x");
        let index = graph.source_index();
        match aggr {
            Aggr::Add | Aggr::Mean => {
                let w = tape.constant(uniform_weights(&graph, matches!(aggr, Aggr::Mean)));
                weighted_aggregate(tape, &graph, index, x, w)
            }
            Aggr::Max => max_aggregate(tape, &graph, index, x),
        }
    });
    let layer = Layer {
        inputs: vec![Some(x)],
        build,
    };
    forward_pair(py, "message_passing", vec!["x"], layer, wrap)
}

/// message_passing(x, edge_index, aggr="add") -> (out, backward)
///
/// One round of message passing with the identity message: out[i] = AGG_{(j→i)} x[j] over the
/// edges j → i of edge_index (2, E) (integers; row 0 = sources, row 1 = targets, PyTorch
/// Geometric's convention), aggr "add" (sum), "mean" or "max" (elementwise; 0 for a node
/// without incoming edges). x is (N, F). `backward(dout)` -> dx.
///
/// The arrays are copied once into the call's tensors: `backward` reruns the layer from them
/// after the call has returned (a view of the caller's buffer could not outlive the call).
#[pyfunction]
#[pyo3(signature = (x, edge_index, aggr = "add"))]
fn message_passing<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    edge_index: &Bound<'py, PyAny>,
    aggr: &str,
) -> PyResult<Bound<'py, PyTuple>> {
    let aggr = match aggr {
        "add" | "sum" => Aggr::Add,
        "mean" => Aggr::Mean,
        "max" => Aggr::Max,
        _ => {
            return Err(PyValueError::new_err(format!(
                "aggr must be add, mean or max, got {aggr:?}"
            )))
        }
    };
    let n = match dtype_of(x, "x")? {
        DType::F32 | DType::F64 => x
            .getattr("shape")?
            .extract::<Vec<usize>>()?
            .first()
            .copied()
            .unwrap_or(0),
    };
    let ei: Vec<i64> = match edge_index.cast::<PyArrayDyn<i64>>() {
        Ok(a) => {
            let ro = a.try_readonly().map_err(|e| PyValueError::new_err(e.to_string()))?;
            if ro.shape().len() != 2 || ro.shape()[0] != 2 {
                return Err(PyValueError::new_err(format!(
                    "edge_index must be (2, E), got shape {:?}",
                    ro.shape()
                )));
            }
            ro.as_array().iter().copied().collect()
        }
        Err(_) => {
            return Err(PyValueError::new_err(
                "edge_index must be an int64 numpy array (2, E) (np.asarray(edge_index, dtype=np.int64))",
            ))
        }
    };
    let e = ei.len() / 2;
    let mut edges = Vec::with_capacity(e);
    for i in 0..e {
        let (s, d) = (ei[i], ei[e + i]);
        if s < 0 || d < 0 {
            return Err(PyValueError::new_err(format!(
                "edge {i} ({s} → {d}) has a negative node index"
            )));
        }
        edges.push((s as usize, d as usize));
    }
    let graph = Graph::from_edges(n, &edges).map_err(to_pyerr)?;
    by_dtype!(x, "x", message_passing_typed(py, x, graph, aggr))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    use pyo3::wrap_pyfunction;
    for f in [
        wrap_pyfunction!(layer_norm_py, m)?,
        wrap_pyfunction!(batch_norm_py, m)?,
        wrap_pyfunction!(group_norm_py, m)?,
        wrap_pyfunction!(instance_norm_py, m)?,
        wrap_pyfunction!(attention, m)?,
        wrap_pyfunction!(message_passing, m)?,
    ] {
        m.add_function(f)?;
    }
    Ok(())
}
