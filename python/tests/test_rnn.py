"""nabla.rnn_grad against the PyTorch fixtures (rnn/, lstm/, gru/) and the command line."""

import json

import numpy as np
import pytest

import nabla
from conftest import assert_close, copies_of, fixture, load_safetensors, other_layouts, run_cli

CASES = [(cell, d, c) for cell, d in (("elman", "rnn"), ("lstm", "lstm"), ("gru", "gru")) for c in ("case1", "case2")]


def load_case(folder, case):
    base = fixture(folder)
    params = load_safetensors(base / f"{case}.params.safetensors")
    batch = load_safetensors(base / f"{case}.batch.safetensors")
    expected = json.loads((base / f"{case}.expected.json").read_text())
    return base, params, batch, expected


def tolerance(dtype):
    # The fixtures' READMEs: 1e-9 for float64 implementations, 1e-4 for float32 ones.
    return 1e-9 if dtype == np.float64 else 1e-4


@pytest.mark.parametrize("cell,folder,case", CASES)
def test_matches_pytorch_fixture(cell, folder, case):
    _, params, batch, want = load_case(folder, case)
    dtype = batch["x"].dtype
    tol = tolerance(dtype)
    for k, ref in [(None, want)] + [(int(k), v) for k, v in want.get("truncated", {}).items()]:
        loss, grads = nabla.rnn_grad(params, batch["x"], batch["z"], cell=cell, truncate=k)
        assert isinstance(loss, float)
        assert abs(loss - ref["loss"]) <= tol * max(1.0, abs(ref["loss"])), (k, loss, ref["loss"])
        assert set(grads) == set(ref["grad"]), (set(grads), set(ref["grad"]))
        for name, g in grads.items():
            assert g.dtype == dtype, f"{name}: result dtype {g.dtype} != input dtype {dtype}"
            assert_close(g, ref["grad"][name], tol, f"{cell} {case} K={k} grad {name}")


@pytest.mark.parametrize("cell,folder,case", CASES)
def test_matches_the_command_line(cell, folder, case):
    base, params, batch, _ = load_case(folder, case)
    p, b = base / f"{case}.params.safetensors", base / f"{case}.batch.safetensors"
    for k in (None, 2):
        args = ["rnn", "grad", "--cell", cell, "--params", p, "--batch", b, "--json"]
        if k:
            args += ["--truncate", k]
        cli = json.loads(run_cli(*args))
        loss, grads = nabla.rnn_grad(params, batch["x"], batch["z"], cell=cell, truncate=k)
        # The command line computes in float64 from the stored values: identical bits for
        # float64 files, float32 rounding otherwise.
        exact = batch["x"].dtype == np.float64
        tol = 0.0 if exact else 1e-4
        assert abs(loss - cli["loss"]) <= tol * max(1.0, abs(cli["loss"]))
        assert set(grads) == set(cli["grad"])
        for name, g in grads.items():
            assert_close(g, cli["grad"][name], tol, f"{cell} {case} K={k} {name} vs CLI")


def small_problem(dtype=np.float64, seed=0):
    r = np.random.default_rng(seed)
    params = {n: r.uniform(-0.5, 0.5, s).astype(dtype) for n, s in (("W", (4, 3)), ("U", (4, 4)), ("V", (2, 4)))}
    x = r.standard_normal((2, 5, 3)).astype(dtype)
    z = r.standard_normal((2, 5, 2)).astype(dtype)
    return params, x, z


def test_float32_in_float32_out_and_close_to_float64():
    p64, x64, z64 = small_problem()
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    l64, g64 = nabla.rnn_grad(p64, x64, z64)
    l32, g32 = nabla.rnn_grad(p32, x64.astype(np.float32), z64.astype(np.float32))
    assert abs(l32 - l64) <= 1e-5 * abs(l64)
    for k in g64:
        assert g32[k].dtype == np.float32 and g64[k].dtype == np.float64
        assert_close(g32[k], g64[k], 1e-5, k)


def test_non_contiguous_arrays_are_copied_and_give_the_same_result():
    p, x, z = small_problem()
    want_loss, want = nabla.rnn_grad(p, x, z)
    # A transposed view (Fortran order) and a strided slice of a larger array.
    pt = dict(p, W=np.asfortranarray(p["W"]))
    assert not pt["W"].flags.c_contiguous
    big = np.zeros((2, 10, 3))
    big[:, ::2, :] = x
    xs = big[:, ::2, :]
    assert not xs.flags.c_contiguous
    loss, g = nabla.rnn_grad(pt, xs, z)
    assert loss == want_loss
    for k in want:
        np.testing.assert_array_equal(g[k], want[k])


def test_wrong_dtype_is_a_value_error():
    p, x, z = small_problem()
    with pytest.raises(ValueError, match="float32 or float64"):
        nabla.rnn_grad(p, x.astype(np.int64), z)
    with pytest.raises(ValueError, match="dtype float32"):
        # One dtype per call: float32 x with float64 weights.
        nabla.rnn_grad(p, x.astype(np.float32), z.astype(np.float32))
    with pytest.raises(ValueError, match="float32 or float64"):
        nabla.rnn_grad(p, x.tolist(), z)


def test_wrong_shape_is_a_value_error_with_nablas_message():
    p, x, z = small_problem()
    with pytest.raises(ValueError, match="shape error"):
        nabla.rnn_grad(dict(p, U=np.zeros((4, 5))), x, z)
    with pytest.raises(ValueError, match="z must be"):
        nabla.rnn_grad(p, x, z[:, :3])


def test_missing_and_unknown_parameters():
    p, x, z = small_problem()
    with pytest.raises(KeyError, match="U"):
        nabla.rnn_grad({k: v for k, v in p.items() if k != "U"}, x, z)
    with pytest.raises(ValueError, match='unknown parameter "w"'):
        nabla.rnn_grad(dict(p, w=p["W"]), x, z)
    with pytest.raises(KeyError, match="weight_ih"):
        nabla.rnn_grad({"V": p["V"]}, x, z, cell="lstm")
    with pytest.raises(ValueError, match="unknown recurrent cell"):
        nabla.rnn_grad(p, x, z, cell="transformer")


def test_bad_values():
    p, x, z = small_problem()
    with pytest.raises(ValueError, match="truncate"):
        nabla.rnn_grad(p, x, z, truncate=0)
    x = x.copy()
    x[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        nabla.rnn_grad(p, x, z)


def test_truncation_with_k_at_least_t_is_exact():
    p, x, z = small_problem()
    loss, g = nabla.rnn_grad(p, x, z)
    lk, gk = nabla.rnn_grad(p, x, z, truncate=5)
    assert lk == loss
    for k in g:
        np.testing.assert_array_equal(gk[k], g[k])
    _, g1 = nabla.rnn_grad(p, x, z, truncate=1)
    assert not np.allclose(g1["U"], g["U"]), "K = 1 must drop the recurrent terms"


@pytest.mark.parametrize("cell,folder", [("elman", "rnn"), ("lstm", "lstm")])
def test_c_contiguous_data_is_read_in_place_other_layouts_copied(cell, folder):
    _, params, batch, _ = load_case(folder, "case1")
    x, z = batch["x"], batch["z"]
    assert x.flags.c_contiguous and z.flags.c_contiguous
    (loss, grads), n = copies_of(nabla.rnn_grad, params, x, z, cell)
    # The parameters are copied into the cell's weights (nabla keeps them); x and z are not.
    assert n == len(params)
    # The same values in other layouts (Fortran order, transposed, strided): one gather each.
    for xf, zf in zip(other_layouts(x).values(), other_layouts(z).values()):
        (loss_f, grads_f), n = copies_of(nabla.rnn_grad, params, xf, zf, cell)
        assert n == len(params) + 2
        # Same elements in the same logical order: the same bits.
        assert loss_f == loss
        for name in grads:
            np.testing.assert_array_equal(grads_f[name], grads[name], err_msg=name)
