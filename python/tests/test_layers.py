"""The layer functions' forward against NumPy formulas and their backward against central
finite differences in float64 (tolerance 1e-6 relative to the largest gradient entry)."""

import numpy as np
import pytest

import nabla

R = np.random.default_rng(0)


def fd_check(f, inputs, dy, eps=1e-6, tol=1e-6):
    """Checks backward(dy) of y, backward = f(*inputs) against differences of sum(y · dy)."""
    _, backward = f(*inputs)
    grads = backward(dy)
    if not isinstance(grads, tuple):
        grads = (grads,)
    for i, (x, g) in enumerate(zip(inputs, grads)):
        if x is None:
            assert g is None
            continue
        assert g.shape == x.shape and g.dtype == x.dtype
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            xp, xm = [a.copy() if a is not None else None for a in inputs], [a.copy() if a is not None else None for a in inputs]
            xp[i][idx] += eps
            xm[i][idx] -= eps
            num[idx] = (np.sum(f(*xp)[0] * dy) - np.sum(f(*xm)[0] * dy)) / (2 * eps)
        err = np.max(np.abs(num - g)) / max(1e-12, np.max(np.abs(num)))
        assert err < tol, f"input {i}: relative error {err:.2e} of the backward vs differences"


def test_layer_norm_forward_and_backward():
    x = R.standard_normal((3, 4, 5))
    w, b = R.standard_normal(5), R.standard_normal(5)
    y, back = nabla.layer_norm(x, w, b, 1e-5)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + 1e-5) * w + b, rtol=0, atol=1e-12)
    fd_check(lambda x, w, b: nabla.layer_norm(x, w, b, 1e-5), [x, w, b], R.standard_normal(x.shape))
    # Without an affine map: the gradients of absent inputs are None.
    dx, dw, db = nabla.layer_norm(x)[1](np.ones_like(x))
    assert dw is None and db is None and dx.shape == x.shape
    # Over the last two axes (normalized_shape = weight.shape).
    y2, _ = nabla.layer_norm(x, np.ones((4, 5)), np.zeros((4, 5)))
    flat = x.reshape(3, 20)
    want = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y2.reshape(3, 20), want, atol=1e-12)


def test_batch_group_instance_norm():
    x = R.standard_normal((3, 4, 5))
    w, b = R.standard_normal(4), R.standard_normal(4)
    y, _ = nabla.batch_norm(x, w, b)
    mu, var = x.mean((0, 2), keepdims=True), x.var((0, 2), keepdims=True)
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + 1e-5) * w[:, None] + b[:, None], atol=1e-12)
    y, _ = nabla.group_norm(x, 2, w, b)
    g = x.reshape(3, 2, 10)
    want = ((g - g.mean(2, keepdims=True)) / np.sqrt(g.var(2, keepdims=True) + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(y, want * w[:, None] + b[:, None], atol=1e-12)
    dy = R.standard_normal(x.shape)
    fd_check(lambda x, w, b: nabla.batch_norm(x, w, b), [x, w, b], dy)
    fd_check(lambda x, w, b: nabla.group_norm(x, 2, w, b), [x, w, b], dy)
    fd_check(lambda x, w, b: nabla.instance_norm(x, w, b), [x, w, b], dy)
    with pytest.raises(ValueError, match="group"):
        nabla.group_norm(x, 3, w, b)


def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attention_forward_and_backward():
    q, k, v = (R.standard_normal((2, 2, 3, 4)) for _ in range(3))
    o, _ = nabla.attention(q, k, v)
    np.testing.assert_allclose(o, softmax(q @ k.swapaxes(-1, -2) / 2.0) @ v, atol=1e-12)
    fd_check(nabla.attention, [q, k, v], R.standard_normal(o.shape))
    # A causal mask (True = may not attend), PyTorch nn.MultiheadAttention's polarity.
    mask = np.triu(np.ones((3, 3), bool), 1)
    om, back = nabla.attention(q, k, v, mask=mask)
    s = np.where(mask, -np.inf, q @ k.swapaxes(-1, -2) / 2.0)
    np.testing.assert_allclose(om, softmax(s) @ v, atol=1e-12)
    fd_check(lambda q, k, v: nabla.attention(q, k, v, mask=mask), [q, k, v], R.standard_normal(o.shape))
    pad = np.array([[False, False, True], [False, True, True]])
    op, _ = nabla.attention(q, k, v, key_padding_mask=pad)
    s = np.where(pad[:, None, None, :], -np.inf, q @ k.swapaxes(-1, -2) / 2.0)
    np.testing.assert_allclose(op, softmax(s) @ v, atol=1e-12)
    with pytest.raises(ValueError, match="bool"):
        nabla.attention(q, k, v, mask=mask.astype(np.float64))


@pytest.mark.parametrize("aggr", ["add", "mean", "max"])
def test_message_passing(aggr):
    x = R.standard_normal((4, 3))
    ei = np.array([[0, 1, 2, 3, 0], [1, 2, 1, 0, 2]], dtype=np.int64)  # (sources, targets)
    out, _ = nabla.message_passing(x, ei, aggr)
    want = np.zeros_like(x)
    for i in range(4):
        msgs = x[ei[0][ei[1] == i]]
        if len(msgs):
            want[i] = {"add": msgs.sum(0), "mean": msgs.mean(0), "max": msgs.max(0)}[aggr]
    np.testing.assert_allclose(out, want, atol=1e-12)
    fd_check(lambda x: nabla.message_passing(x, ei, aggr), [x], R.standard_normal(out.shape))


def test_message_passing_errors():
    x = R.standard_normal((3, 2))
    with pytest.raises(ValueError, match="int64"):
        nabla.message_passing(x, np.array([[0], [1]], dtype=np.float64))
    with pytest.raises(ValueError, match=r"\(2, E\)"):
        nabla.message_passing(x, np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError):
        nabla.message_passing(x, np.array([[0], [7]], np.int64))
    with pytest.raises(ValueError, match="aggr"):
        nabla.message_passing(x, np.array([[0], [1]], np.int64), "min")


def test_float32_layers_and_dtype_mismatch():
    x = R.standard_normal((2, 6)).astype(np.float32)
    y, back = nabla.layer_norm(x, np.ones(6, np.float32), np.zeros(6, np.float32))
    assert y.dtype == np.float32
    assert all(g.dtype == np.float32 for g in back(np.ones_like(x)))
    with pytest.raises(ValueError, match="dtype float32"):
        nabla.layer_norm(x, np.ones(6), np.zeros(6))
    with pytest.raises(ValueError, match="shape"):
        back(np.ones((3, 6), np.float32))
    # A backward can be called again, with another dy.
    g1 = back(np.ones_like(x))[0]
    g2 = back(2 * np.ones_like(x))[0]
    np.testing.assert_allclose(g2, 2 * g1, rtol=1e-6, atol=1e-6)
