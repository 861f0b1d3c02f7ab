"""nabla from Python: the library itself, NumPy arrays in and out.

Functions (see their docstrings, and ``help(nabla)``):

- ``rnn_grad(params, x, z, cell="elman", truncate=None)`` -> ``(loss, grads)``: exact or
  chunked-truncated BPTT of the Elman RNN, LSTM or GRU with a linear readout (``nabla rnn grad``);
- ``load_vit(path, heads=None, pool=None)`` -> a model with ``.predict(x)`` and ``.attention(x)``;
- ``load_resnet(path)`` -> a ResNet (timm names, architecture inferred) with ``.predict(x)``;
- ``reproduce()`` -> dict: the assignment's exercises (``nabla reproduce --json``);
- ``train(task, **flags)`` -> dict: ``nabla TASK train`` with keyword arguments as flags;
- ``layer_norm``, ``batch_norm``, ``group_norm``, ``instance_norm``, ``attention``,
  ``message_passing``: ``(y, backward)``, where ``backward(dy)`` returns the input gradients.

Arrays are float32 or float64 (one dtype per call); results have the inputs' dtype.
``rnn_grad`` (``x``, ``z``) and the models' ``predict`` and ``attention`` (images, float32 for
the float32 models) read a C-contiguous array in place and copy any other layout (or a
float64 image array) once; weights and layer inputs are copied once into the tensors nabla
keeps (a layer's ``backward`` reruns it from them after the call). Errors are
``ValueError`` (shapes, dtypes, values), ``OSError`` (files) and ``KeyError`` (a missing
parameter), with nabla's message.
"""

from ._nabla import (
    Backward,
    ResnetModel,
    VitModel,
    __version__,
    attention,
    batch_norm,
    group_norm,
    instance_norm,
    layer_norm,
    load_resnet,
    load_vit,
    message_passing,
    reproduce,
    rnn_grad,
    train,
)

__all__ = [
    "Backward",
    "ResnetModel",
    "VitModel",
    "__version__",
    "attention",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "load_resnet",
    "load_vit",
    "message_passing",
    "reproduce",
    "rnn_grad",
    "train",
]
