//! `nabla._nabla`, the native part of the Python package `nabla` (python/nabla/): nabla's own
//! functions with NumPy arrays in and out. Nothing here computes what the library does not:
//! each function converts its arguments, runs one library call with the GIL released, and
//! converts the result back.
//!
//! Rules every function follows:
//! - arrays in: float32 or float64 NumPy arrays (all arrays of one call of one dtype). The data
//!   arrays of `rnn_grad` (x, z) and the images of the models' `predict` and `attention` are
//!   read in place when C-contiguous ([`array::Input`], a `TensorView` of NumPy's buffer, read
//!   with the GIL released) and gathered in logical order once for any other layout (a
//!   transpose, a strided view); the models compute in float32, so float64 images are
//!   converted (one copy). An inference forward needs its input only in its first layer, which
//!   reads the view and puts only its output on the tape (`Vit::predict_view`,
//!   `Resnet::predict_view`). What nabla keeps or puts on a tape — weights, a layer's inputs
//!   that its `backward` reuses — is copied once into an owned tensor ([`array::tensor_from`]);
//! - arrays out: a nabla tensor's buffer becomes the NumPy array's (no copy);
//! - errors: [`to_pyerr`] maps nabla's error type to `ValueError` (shapes, dtypes, values,
//!   malformed files), `OSError` (the file system), `KeyError` (a missing parameter) and
//!   `RuntimeError`, with nabla's message; a panic inside nabla is caught ([`detached`]) and
//!   raised as `RuntimeError`, never unwound into the interpreter.

mod array;
mod layers;
mod train;

use array::{dtype_of, out_array, tensor_from, DType, Float, Input};
use nabla::analysis::elman::ElmanWeights;
use nabla::analysis::gated::GatedWeights;
use nabla::models::resnet::Resnet;
use nabla::models::vit::{Pool, Vit};
use nabla::nn::rnn::{Activation, BackwardOptions, CellKind};
use nabla::{NablaError, ParamStore, Tensor, TensorView};
use pyo3::exceptions::{PyKeyError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::OnceLock;

/// nabla's error as the Python exception a caller expects, with nabla's message (and hint).
pub(crate) fn to_pyerr(e: NablaError) -> PyErr {
    let msg = match e.hint() {
        Some(h) => format!("{e}; {h}"),
        None => e.to_string(),
    };
    match &e {
        NablaError::Io { source, .. } | NablaError::Stdout(source) => match source.raw_os_error() {
            // (errno, message): Python picks the subclass (FileNotFoundError, PermissionError…).
            Some(n) => PyOSError::new_err((n, msg)),
            None => PyOSError::new_err(msg),
        },
        NablaError::Shape { .. }
        | NablaError::InvalidArgument(_)
        | NablaError::Format { .. }
        | NablaError::NonFinite(_) => PyValueError::new_err(msg),
        NablaError::Other(_) => PyRuntimeError::new_err(msg),
    }
}

/// The pool every call runs on: the command line's (a worker of a rayon pool with a 64 MiB
/// stack, so that serial parts do not run beside the pool's spinning threads).
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .stack_size(64 << 20)
            .build()
            .ok()
    })
    .as_ref()
}

/// The text of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f` with the GIL released, on nabla's pool, catching a panic: the one way every
/// function of this module calls into nabla.
pub(crate) fn detached<R: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> nabla::Result<R> + Send,
) -> PyResult<R> {
    let r = py.detach(|| {
        std::panic::catch_unwind(AssertUnwindSafe(|| match pool() {
            Some(p) => p.install(f),
            None => f(),
        }))
    });
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_pyerr(e)),
        Err(p) => Err(PyRuntimeError::new_err(format!(
            "internal error in nabla (a bug, please report it): {}",
            panic_message(&*p)
        ))),
    }
}

/// A JSON value as the Python object `json.loads` makes of it (exact floats: serde_json's
/// `float_roundtrip` writes the shortest text that reads back to the same bits).
pub(crate) fn json_to_py<'py>(
    py: Python<'py>,
    v: &serde_json::Value,
) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// `params[name]` as a tensor of `T`, `KeyError` when absent and required.
fn param<T: Float>(
    params: &Bound<'_, PyDict>,
    name: &str,
    required: bool,
    cell: CellKind,
) -> PyResult<Option<Tensor<T>>> {
    match params.get_item(name)? {
        Some(a) => Ok(Some(tensor_from::<T>(&a, &format!("params[{name:?}]"))?)),
        None if required => Err(PyKeyError::new_err(format!(
            "{name:?}: missing from params (the {cell} cell needs {})",
            param_names(cell).join(", ")
        ))),
        None => Ok(None),
    }
}

/// The parameter names of a cell, as `nabla rnn grad` reads them (required ones first).
fn param_names(cell: CellKind) -> &'static [&'static str] {
    match cell {
        CellKind::Elman => &["W", "U", "V", "h0 (optional)"],
        CellKind::Lstm => &[
            "weight_ih",
            "weight_hh",
            "V",
            "bias_ih, bias_hh, h0, c0 (optional)",
        ],
        CellKind::Gru => &[
            "weight_ih",
            "weight_hh",
            "V",
            "bias_ih, bias_hh, h0 (optional)",
        ],
    }
}

fn check_keys(params: &Bound<'_, PyDict>, cell: CellKind) -> PyResult<()> {
    let known: &[&str] = match cell {
        CellKind::Elman => &["W", "U", "V", "h0"],
        CellKind::Lstm => &[
            "weight_ih",
            "weight_hh",
            "bias_ih",
            "bias_hh",
            "V",
            "h0",
            "c0",
        ],
        CellKind::Gru => &["weight_ih", "weight_hh", "bias_ih", "bias_hh", "V", "h0"],
    };
    for k in params.keys() {
        let k: String = k.extract().map_err(|_| {
            PyValueError::new_err("params must be a dict with str keys (the parameter names)")
        })?;
        if !known.contains(&k.as_str()) {
            return Err(PyValueError::new_err(format!(
                "unknown parameter {k:?} for the {cell} cell (expected {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

fn check_finite<T: Float>(named: &[(&str, Option<TensorView<'_, T>>)]) -> nabla::Result<()> {
    for (name, t) in named {
        if let Some(t) = t {
            t.check_finite(name)?;
        }
    }
    Ok(())
}

/// The loss and named gradients of one RNN problem in dtype `T`.
type Grads<T> = (f64, Vec<(&'static str, Tensor<T>)>);

fn rnn_grad_typed<T: Float>(
    py: Python<'_>,
    params: &Bound<'_, PyDict>,
    x: &Bound<'_, PyAny>,
    z: &Bound<'_, PyAny>,
    cell: CellKind,
    truncate: Option<usize>,
) -> PyResult<Grads<T>> {
    check_keys(params, cell)?;
    // Read in place (C-contiguous) for the whole call; the views are what crosses into nabla.
    let (x, z) = (Input::<T>::new(x, "x")?, Input::<T>::new(z, "z")?);
    let (x, z) = (x.view(), z.view());
    let h0 = param::<T>(params, "h0", false, cell)?;
    let opts = BackwardOptions {
        truncate,
        need_x: false,
        keep_grad_h: false,
    };
    let req = |n: &str| -> PyResult<Tensor<T>> {
        Ok(param::<T>(params, n, true, cell)?.expect("required parameters are present"))
    };
    match cell {
        CellKind::Elman => {
            let w = ElmanWeights {
                w: req("W")?,
                u: req("U")?,
                v: req("V")?,
                b_h: None,
                b_y: None,
                // The assignment's RNN, as `nabla rnn grad` computes it.
                activation: Activation::Sigmoid,
            };
            detached(py, move || {
                check_finite(&[
                    ("W", Some(w.w.view())),
                    ("U", Some(w.u.view())),
                    ("V", Some(w.v.view())),
                    ("h0", h0.as_ref().map(Tensor::view)),
                    ("x", Some(x)),
                    ("z", Some(z)),
                ])?;
                let g = w.mse_bptt(x, z, h0.as_ref(), &opts)?;
                let loss = nabla::analysis::rnn::finite_loss(g.loss)?;
                let mut named: Vec<(&'static str, Tensor<T>)> =
                    g.named().into_iter().map(|(n, t)| (n, t.clone())).collect();
                if h0.is_some() {
                    named.push(("h0", g.h0));
                }
                Ok((loss, named))
            })
        }
        CellKind::Lstm | CellKind::Gru => {
            let c0 = if cell == CellKind::Lstm {
                param::<T>(params, "c0", false, cell)?
            } else {
                None
            };
            let w = GatedWeights {
                cell,
                w_ih: req("weight_ih")?,
                w_hh: req("weight_hh")?,
                b_ih: param::<T>(params, "bias_ih", false, cell)?,
                b_hh: param::<T>(params, "bias_hh", false, cell)?,
                v: req("V")?,
            };
            detached(py, move || {
                check_finite(&[
                    ("weight_ih", Some(w.w_ih.view())),
                    ("weight_hh", Some(w.w_hh.view())),
                    ("bias_ih", w.b_ih.as_ref().map(Tensor::view)),
                    ("bias_hh", w.b_hh.as_ref().map(Tensor::view)),
                    ("V", Some(w.v.view())),
                    ("h0", h0.as_ref().map(Tensor::view)),
                    ("c0", c0.as_ref().map(Tensor::view)),
                    ("x", Some(x)),
                    ("z", Some(z)),
                ])?;
                let g = w.mse_bptt(x, z, h0.as_ref(), c0.as_ref(), &opts)?;
                let loss = nabla::analysis::rnn::finite_loss(g.loss)?;
                let mut named: Vec<(&'static str, Tensor<T>)> =
                    g.named().into_iter().map(|(n, t)| (n, t.clone())).collect();
                if h0.is_some() {
                    named.push(("h0", g.h0));
                }
                if let (Some(_), Some(c)) = (&c0, g.c0) {
                    named.push(("c0", c));
                }
                Ok((loss, named))
            })
        }
    }
}

fn grads_to_py<'py, T: Float>(
    py: Python<'py>,
    (loss, named): Grads<T>,
) -> PyResult<Bound<'py, PyTuple>> {
    let d = PyDict::new(py);
    for (name, t) in named {
        d.set_item(name, out_array(py, t)?)?;
    }
    PyTuple::new(py, [loss.into_pyobject(py)?.into_any(), d.into_any()])
}

/// rnn_grad(params, x, z, cell="elman", truncate=None) -> (loss, grads)
///
/// The loss L = Σ_b Σ_t ‖z_t − V h_t‖² of a recurrent network and its gradients by
/// backpropagation through time — exact, or chunked-truncated with chunks of `truncate` steps
/// (no gradient crosses a chunk boundary) — as `nabla rnn grad` computes them.
///
/// cell="elman": the assignment's RNN h_t = sigmoid(W x_t + U h_{t−1}), y_t = V h_t, with
/// params W (H, I), U (H, H), V (O, H) and optionally h0 (B, H). cell="lstm" / "gru":
/// PyTorch's cells with a linear readout, params weight_ih, weight_hh, [bias_ih, bias_hh], V,
/// [h0, c0 (LSTM only)]. x is (B, T, I), z (B, T, O). The gradients have the parameters'
/// names and the inputs' dtype (float32 or float64, computed in that dtype).
#[pyfunction]
#[pyo3(signature = (params, x, z, cell = "elman", truncate = None))]
fn rnn_grad<'py>(
    py: Python<'py>,
    params: &Bound<'py, PyDict>,
    x: &Bound<'py, PyAny>,
    z: &Bound<'py, PyAny>,
    cell: &str,
    truncate: Option<usize>,
) -> PyResult<Bound<'py, PyTuple>> {
    let cell = CellKind::parse(cell).map_err(to_pyerr)?;
    if truncate == Some(0) {
        return Err(PyValueError::new_err(
            "truncate must be at least 1 (or None)",
        ));
    }
    match dtype_of(x, "x")? {
        DType::F32 => grads_to_py(py, rnn_grad_typed::<f32>(py, params, x, z, cell, truncate)?),
        DType::F64 => grads_to_py(py, rnn_grad_typed::<f64>(py, params, x, z, cell, truncate)?),
    }
}

/// A path argument: a `str` or `os.PathLike`, or an open file object (read by its name); a
/// closed file is an `OSError`, as reading it in Python would be.
fn path_arg(obj: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    if let Ok(p) = obj.extract::<PathBuf>() {
        return Ok(p);
    }
    if obj.hasattr("closed")? && obj.hasattr("name")? {
        let name = obj.getattr("name")?;
        if obj.getattr("closed")?.is_truthy()? {
            return Err(PyOSError::new_err(format!(
                "I/O operation on closed file {}",
                name.str()?
            )));
        }
        if let Ok(p) = name.extract::<PathBuf>() {
            return Ok(p);
        }
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "expected a path (str or os.PathLike) or an open file, got {}",
        obj.get_type().name()?
    )))
}

/// A Vision Transformer loaded from timm-named safetensors or a nabla run: float32 weights.
#[pyclass(module = "nabla", frozen)]
struct VitModel {
    vit: Vit,
    store: ParamStore<f32>,
}

/// `x` as the float32 images a model computes on: a C-contiguous float32 array read in place,
/// any other layout gathered once, a float64 array converted (one copy).
fn images<'py>(x: &Bound<'py, PyAny>) -> PyResult<Input<'py, f32>> {
    match dtype_of(x, "x")? {
        DType::F32 => Input::new(x, "x"),
        DType::F64 => Input::converted::<f64>(x, "x"),
    }
}

#[pymethods]
impl VitModel {
    /// predict(x) -> logits (B, classes), float32
    ///
    /// The model's forward (evaluation mode) on images x (B, C, H, W), already normalized as
    /// the model expects (as timm's `model(x)`). A C-contiguous float32 x is read in place;
    /// another layout is copied once, and float64 input is converted to float32 (a copy).
    fn predict<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let x = images(x)?;
        let x = x.view();
        let logits = detached(py, || {
            x.check_finite("x")?;
            self.vit.predict_view(&self.store, x)
        })?;
        out_array(py, logits)
    }

    /// attention(x) -> list of (B, heads, T, T) float32 arrays, one per block
    ///
    /// The attention probabilities softmax(q kᵀ / √d_head) of every block for images x
    /// (rows = queries, columns = keys, token 0 = the class token). x is read as by
    /// `predict`: in place when C-contiguous float32, else copied once.
    fn attention<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let x = images(x)?;
        let x = x.view();
        let maps = detached(py, || {
            x.check_finite("x")?;
            self.vit.attention_view(&self.store, x)
        })?;
        let l = PyList::empty(py);
        for m in maps {
            l.append(out_array(py, m)?)?;
        }
        Ok(l)
    }

    /// The architecture (image_size, patch, in_chans, dim, depth, heads, mlp_dim,
    /// num_classes, pool, eps, dropout) as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = serde_json::to_value(&self.vit.cfg)
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        json_to_py(py, &v)
    }

    fn __repr__(&self) -> String {
        let c = &self.vit.cfg;
        format!(
            "VitModel(image_size={}, patch={}, dim={}, depth={}, heads={}, classes={}, pool={:?})",
            c.image_size, c.patch, c.dim, c.depth, c.heads, c.num_classes, c.pool
        )
    }
}

/// A ResNet loaded from timm-named safetensors or a nabla run: float32 weights, evaluation
/// mode (BatchNorm's running statistics).
#[pyclass(module = "nabla", frozen)]
struct ResnetModel {
    net: Resnet<f32>,
    store: ParamStore<f32>,
}

#[pymethods]
impl ResnetModel {
    /// predict(x) -> logits (B, classes), float32
    ///
    /// The network's forward in evaluation mode on images x (B, C, H, W), fed as given (as
    /// timm's `model.eval()(x)`). A C-contiguous float32 x is read in place; another layout
    /// is copied once, and float64 input is converted to float32 (a copy).
    fn predict<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let x = images(x)?;
        let x = x.view();
        let logits = detached(py, || {
            x.check_finite("x")?;
            self.net.predict_view(&self.store, x)
        })?;
        out_array(py, logits)
    }

    /// The architecture (block, layers, channels, stem_width, stem, in_chans, num_classes),
    /// as inferred from the state dict, as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = serde_json::to_value(&self.net.cfg)
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        json_to_py(py, &v)
    }

    fn __repr__(&self) -> String {
        let c = &self.net.cfg;
        format!(
            "ResnetModel(block={:?}, layers={:?}, channels={:?}, in_chans={}, classes={})",
            c.block, c.layers, c.channels, c.in_chans, c.num_classes
        )
    }
}

/// load_resnet(path) -> ResnetModel
///
/// Loads a ResNet as `nabla cnn predict` does: a timm-named .safetensors file (the
/// architecture — block type, layer counts, widths, stem, classes — is inferred from the
/// tensor names and shapes) or a nabla run / checkpoint folder of `nabla cnn train`.
#[pyfunction]
fn load_resnet(py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<ResnetModel> {
    let path = path_arg(path)?;
    let (net, store, _) = detached(py, || nabla::models::cnn_task::load_model(&path))?;
    Ok(ResnetModel { net, store })
}

/// load_vit(path, heads=None, pool=None) -> VitModel
///
/// Loads a Vision Transformer as `nabla vit predict` does: a timm-named .safetensors file
/// (heads is then required: the tensor shapes do not show it; pool "cls" = timm's
/// global_pool='token', "avg") or a nabla checkpoint / run folder (whose saved configuration
/// is used; heads must agree with it, pool overrides it).
#[pyfunction]
#[pyo3(signature = (path, heads = None, pool = None))]
fn load_vit(
    py: Python<'_>,
    path: &Bound<'_, PyAny>,
    heads: Option<usize>,
    pool: Option<&str>,
) -> PyResult<VitModel> {
    let path = path_arg(path)?;
    let pool = pool
        .map(|p| p.parse::<Pool>())
        .transpose()
        .map_err(to_pyerr)?;
    let (vit, store) = detached(py, || {
        nabla::models::vit_task::load_model(&path, heads, pool)
    })?;
    Ok(VitModel { vit, store })
}

/// reproduce(only=None) -> dict
///
/// Every numeric exercise of the assignment, computed through the library and checked: the
/// content of `nabla reproduce --json` (keyed by exercise id; each entry has title, ok,
/// values, derivation); `only="1.4"` computes that exercise alone (`--only`).
#[pyfunction]
#[pyo3(signature = (only = None))]
fn reproduce(py: Python<'_>, only: Option<String>) -> PyResult<Bound<'_, PyAny>> {
    let v = detached(py, move || {
        let entries = nabla::exercises::run(only.as_deref())?;
        Ok(nabla::exercises::to_json(&entries))
    })?;
    json_to_py(py, &v)
}

/// _copies() -> int
///
/// Input arrays copied by nabla so far in this process (into an owned tensor, gathered from
/// a layout other than C order, or converted to another dtype). For tests: a C-contiguous `x`
/// and `z` of `rnn_grad` add nothing, a transposed or Fortran-ordered one adds one each; a
/// model's C-contiguous float32 images add nothing, other layouts and float64 one.
#[pyfunction]
fn _copies() -> usize {
    array::copies()
}

#[pymodule]
fn _nabla(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The interpreter owns SIGINT (KeyboardInterrupt); `train` forwards it to the trainer.
    nabla::train::host_handles_signals();
    // A bad NABLA_ISA is an error at import, never an illegal instruction later.
    nabla::kernels::isa::init().map_err(|e| PyValueError::new_err(e.to_string()))?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<VitModel>()?;
    m.add_class::<ResnetModel>()?;
    m.add_class::<layers::Backward>()?;
    m.add_function(wrap_pyfunction!(rnn_grad, m)?)?;
    m.add_function(wrap_pyfunction!(load_vit, m)?)?;
    m.add_function(wrap_pyfunction!(load_resnet, m)?)?;
    m.add_function(wrap_pyfunction!(reproduce, m)?)?;
    m.add_function(wrap_pyfunction!(_copies, m)?)?;
    m.add_function(wrap_pyfunction!(train::train, m)?)?;
    layers::register(m)?;
    Ok(())
}
