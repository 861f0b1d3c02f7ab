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
``rnn_grad`` reads a C-contiguous ``x`` and ``z`` in place and copies any other layout once;
weights, layer inputs and images are copied once into the tensors nabla keeps. Errors are
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
