"""Shared helpers of nabla's Python tests.

The shared folder (data and PyTorch/timm fixtures) is located as the Rust tests do
(tests/common): ``$NABLA_SHARED``, else ``../shared`` beside the checkout; tests that need it
skip with the reason when it is absent. The ``nabla`` binary (for comparisons with the command
line) is ``$NABLA_BIN``, else the checkout's target/{debug,release}/nabla.
"""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import nabla

REPO = Path(__file__).resolve().parents[2]


def shared_dir():
    env = os.environ.get("NABLA_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def fixture(rel):
    """``shared/fixtures/rel``, or skip the test (with the reason) when it is absent."""
    p = shared_dir() / "fixtures" / rel
    if not p.exists():
        pytest.skip(f"{p} is absent (no shared folder: NABLA_SHARED or ../shared)")
    return p


def nabla_bin():
    env = os.environ.get("NABLA_BIN")
    cands = [Path(env)] if env else [REPO / "target" / d / "nabla" for d in ("debug", "release")]
    for c in cands:
        if c.is_file():
            return c
    pytest.skip("no nabla binary (build it with cargo build, or set NABLA_BIN)")


def run_cli(*args):
    """Runs the nabla binary; its stdout (``--json`` output) parsed line by line."""
    r = subprocess.run([str(nabla_bin()), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"nabla {' '.join(map(str, args))} failed:\n{r.stderr}"
    return r.stdout


_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


def load_safetensors(path):
    """The tensors of a safetensors file as NumPy arrays (8-byte header length, JSON header,
    little-endian data): the fixtures' files, read without another dependency."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dt = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        out[name] = np.frombuffer(data[a:b], dtype=dt).reshape(info["shape"]).astype(dt.newbyteorder("="))
    return out


def assert_close(got, want, tol, what=""):
    """|got − want| <= tol · max(1, max |want|) elementwise (the fixtures' stated criterion)."""
    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    scale = max(1.0, float(np.max(np.abs(want))) if want.size else 0.0)
    assert err <= tol * scale, f"{what}: max abs error {err:.3e} > {tol:.1e} * {scale:.3g}"


def other_layouts(x):
    """The values of the C-contiguous array ``x`` in three other memory layouts — Fortran
    order, a transposed view, a strided view — each of which nabla gathers once."""
    # Swap two axes longer than 1 (NumPy calls an array contiguous whatever the strides of
    # its length-1 axes).
    i, j = [k for k, n in enumerate(x.shape) if n > 1][:2]
    swap = list(range(x.ndim))
    swap[i], swap[j] = j, i
    out = {
        "fortran": np.asfortranarray(x),
        "transposed": x.transpose(swap).copy().transpose(swap),
        "strided": np.repeat(x, 2, axis=-1)[..., ::2],
    }
    for name, a in out.items():
        assert not a.flags.c_contiguous and np.array_equal(a, x), name
    return out


def copies_of(f, *args):
    """``f(*args)`` and how many input arrays nabla copied meanwhile (``_copies()``)."""
    before = nabla._nabla._copies()
    out = f(*args)
    return out, nabla._nabla._copies() - before


def check_images_read_in_place(f, x):
    """A model method ``f`` (predict, attention) reads the C-contiguous float32 images ``x`` in
    place (no copy) and copies any other layout, or float64 images, exactly once — with the
    same bits (the same float32 values in the same logical order)."""
    assert x.dtype == np.float32 and x.flags.c_contiguous
    want, n = copies_of(f, x)
    assert n == 0, f"{n} copies of C-contiguous float32 images"
    cases = {
        **other_layouts(x),
        "float64": x.astype(np.float64),
        "float64, Fortran order": np.asfortranarray(x, dtype=np.float64),
    }
    for name, xl in cases.items():
        got, n = copies_of(f, xl)
        assert n == 1, f"{name}: {n} copies"
        np.testing.assert_array_equal(got, want, err_msg=name)
