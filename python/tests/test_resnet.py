"""nabla.load_resnet against timm's logits (fixtures/resnet) and `nabla cnn predict`."""

import json

import numpy as np
import pytest

import nabla
from conftest import check_images_read_in_place, fixture, load_safetensors, run_cli


def model1():
    base = fixture("resnet/model1")
    want = json.loads((base / "expected.json").read_text())
    m = nabla.load_resnet(base / "model.safetensors")
    x = load_safetensors(base / "input.safetensors")["x"]
    return base, m, x, want


def test_logits_match_timm():
    _, m, x, want = model1()
    logits = m.predict(x)
    assert logits.dtype == np.float32 and logits.shape == np.shape(want["logits"])
    # The fixture's stated tolerance (as tests/resnet.rs): max |Δ| <= 1e-4 · max |logit|.
    ref = np.asarray(want["logits"], np.float64)
    err = float(np.max(np.abs(logits - ref)))
    assert err <= 1e-4 * float(np.max(np.abs(ref))), f"max |Δ logits| {err:.3e}"
    assert m.config["in_chans"] == 3 and m.config["num_classes"] == 10
    assert m.config["layers"] == [1, 1, 1, 1]
    # float64 input is converted to float32: the same logits.
    np.testing.assert_array_equal(m.predict(x.astype(np.float64)), logits)


def test_c_contiguous_images_are_read_in_place_other_layouts_copied():
    _, m, x, _ = model1()
    check_images_read_in_place(m.predict, x)


def test_matches_cnn_predict_on_the_command_line():
    base, m, x, _ = model1()
    out = run_cli(
        "cnn", "predict", "--checkpoint", base / "model.safetensors",
        "--input", base / "input.safetensors", "--json",
    )
    cli = np.asarray(json.loads(out)["logits"], np.float32)
    # The same library call on the same weights and input (the JSON's floats read back exactly).
    np.testing.assert_array_equal(m.predict(x), cli)


def test_errors():
    base, m, x, _ = model1()
    with pytest.raises(ValueError, match="channels"):
        m.predict(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        m.predict(np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        m.predict(np.full((1, 3, 32, 32), np.nan, np.float32))
    vit = fixture("vit/model1") / "model.safetensors"
    with pytest.raises(ValueError, match="conv1"):
        nabla.load_resnet(vit)
    with pytest.raises(OSError):
        nabla.load_resnet(base / "no-such-model.safetensors")
