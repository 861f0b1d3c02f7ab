"""Type stubs of nabla's native module (re-exported by the ``nabla`` package)."""

import os
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

FloatArray = Union[npt.NDArray[np.float32], npt.NDArray[np.float64]]
PathLike = Union[str, os.PathLike]

__version__: str

class Backward:
    """``backward(dy)`` -> the gradients of the layer call's inputs (a tuple; one array for
    message_passing), ``None`` for an optional input that was not given."""

    def __call__(self, dy: FloatArray) -> Any: ...

class VitModel:
    """A Vision Transformer with float32 weights (timm names)."""

    @property
    def config(self) -> Dict[str, Any]: ...
    def predict(self, x: FloatArray) -> npt.NDArray[np.float32]:
        """Logits (B, classes) of normalized images x (B, C, H, W). A C-contiguous float32
        x is read in place; another layout is copied once, float64 converted (a copy)."""
    def attention(self, x: FloatArray) -> List[npt.NDArray[np.float32]]:
        """Per block, the attention probabilities (B, heads, T, T); x read as by predict."""

class ResnetModel:
    """A ResNet with float32 weights (timm names), in evaluation mode."""

    @property
    def config(self) -> Dict[str, Any]: ...
    def predict(self, x: FloatArray) -> npt.NDArray[np.float32]:
        """Logits (B, classes) of images x (B, C, H, W), fed as given. A C-contiguous
        float32 x is read in place; another layout is copied once, float64 converted."""

def rnn_grad(
    params: Dict[str, FloatArray],
    x: FloatArray,
    z: FloatArray,
    cell: Literal["elman", "lstm", "gru"] = "elman",
    truncate: Optional[int] = None,
) -> Tuple[float, Dict[str, FloatArray]]:
    """Loss Σ‖z − V h‖² and its exact (or chunked-truncated) BPTT gradients, named as the
    parameters (W, U, V, h0 for the Elman RNN; weight_ih, weight_hh, bias_ih, bias_hh, V,
    h0, c0 for LSTM/GRU), in the inputs' dtype. A C-contiguous x and z are read in place,
    other layouts copied once."""

def load_vit(
    path: PathLike, heads: Optional[int] = None, pool: Optional[Literal["cls", "avg"]] = None
) -> VitModel:
    """A ViT from a timm-named .safetensors file (heads required) or a nabla run/checkpoint."""

def load_resnet(path: PathLike) -> ResnetModel:
    """A ResNet from a timm-named .safetensors file (architecture inferred from the names and
    shapes) or a ``nabla cnn train`` run/checkpoint."""

def _copies() -> int:
    """Input arrays copied so far (into owned tensors, gathered from non-C layouts, or
    converted from float64 for a float32 model): for the tests."""

def reproduce(only: Optional[str] = None) -> Dict[str, Any]:
    """The assignment's exercises, as ``nabla reproduce --json`` (``only``: one id, e.g. "1.4")."""

def train(task: Literal["vit", "rnn", "gnn"], **flags: Any) -> Dict[str, Any]:
    """``nabla TASK train`` with the keyword arguments as flags (out= or resume= required);
    returns run_dir, step, last, best, test. Ctrl-C checkpoints, then raises
    KeyboardInterrupt (where Python handles SIGINT: not in a process started with it
    ignored)."""

def layer_norm(
    x: FloatArray,
    weight: Optional[FloatArray] = None,
    bias: Optional[FloatArray] = None,
    eps: float = 1e-5,
    normalized_ndim: Optional[int] = None,
) -> Tuple[FloatArray, Backward]:
    """Fused LayerNorm; backward(dy) -> (dx, dweight, dbias).
    Inputs copied once (backward reruns the layer from them)."""

def batch_norm(
    x: FloatArray,
    weight: Optional[FloatArray] = None,
    bias: Optional[FloatArray] = None,
    eps: float = 1e-5,
) -> Tuple[FloatArray, Backward]:
    """Fused BatchNorm (training mode) on (N, C, ...); backward(dy) -> (dx, dweight, dbias).
    Inputs copied once (backward reruns the layer from them)."""

def group_norm(
    x: FloatArray,
    groups: int,
    weight: Optional[FloatArray] = None,
    bias: Optional[FloatArray] = None,
    eps: float = 1e-5,
) -> Tuple[FloatArray, Backward]:
    """Fused GroupNorm on (N, C, ...); backward(dy) -> (dx, dweight, dbias).
    Inputs copied once (backward reruns the layer from them)."""

def instance_norm(
    x: FloatArray,
    weight: Optional[FloatArray] = None,
    bias: Optional[FloatArray] = None,
    eps: float = 1e-5,
) -> Tuple[FloatArray, Backward]:
    """Fused InstanceNorm on (N, C, ...); backward(dy) -> (dx, dweight, dbias).
    Inputs copied once (backward reruns the layer from them)."""

def attention(
    q: FloatArray,
    k: FloatArray,
    v: FloatArray,
    mask: Optional[npt.NDArray[np.bool_]] = None,
    key_padding_mask: Optional[npt.NDArray[np.bool_]] = None,
) -> Tuple[FloatArray, Backward]:
    """Scaled-dot-product attention on (B, H, T, d) heads (mask True = not attended);
    backward(do) -> (dq, dk, dv).
    Inputs copied once (backward reruns the layer from them)."""

def message_passing(
    x: FloatArray,
    edge_index: npt.NDArray[np.int64],
    aggr: Literal["add", "mean", "max"] = "add",
) -> Tuple[FloatArray, Backward]:
    """out[i] = AGG over edges j→i of x[j] (edge_index (2, E): sources, targets);
    backward(dout) -> dx.
    Inputs copied once (backward reruns the layer from them)."""
