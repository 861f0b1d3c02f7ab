"""nabla.load_vit against timm's logits and attention (fixtures/vit) and `nabla vit predict`."""

import json

import numpy as np
import pytest

import nabla
from conftest import assert_close, check_images_read_in_place, fixture, load_safetensors, run_cli


def model1():
    base = fixture("vit/model1")
    want = json.loads((base / "expected.json").read_text())
    cfg = want["config"]
    pool = "avg" if cfg["global_pool"] == "avg" else "cls"
    m = nabla.load_vit(base / "model.safetensors", heads=cfg["num_heads"], pool=pool)
    x = load_safetensors(base / "input.safetensors")["x"]
    return base, m, x, want


def test_logits_and_attention_match_timm():
    _, m, x, want = model1()
    logits = m.predict(x)
    assert logits.dtype == np.float32 and logits.shape == np.shape(want["logits"])
    # float32 against timm's float32 forward.
    assert_close(logits, want["logits"], 1e-4, "logits")
    att = m.attention(x)
    assert len(att) == want["config"]["depth"]
    b, h, t = x.shape[0], want["config"]["num_heads"], want["config"]["num_tokens"]
    assert all(a.shape == (b, h, t, t) for a in att)
    assert_close(att[0][0], want["attn_block0_item0"], 1e-5, "attention block 0 item 0")
    np.testing.assert_allclose(att[1].sum(-1), 1.0, atol=1e-5)
    assert m.config["heads"] == h and m.config["num_classes"] == 10


def test_float64_input_is_converted():
    _, m, x, _ = model1()
    np.testing.assert_array_equal(m.predict(x.astype(np.float64)), m.predict(x))


@pytest.mark.parametrize("method", ["predict", "attention"])
def test_c_contiguous_images_are_read_in_place_other_layouts_copied(method):
    _, m, x, _ = model1()
    check_images_read_in_place(getattr(m, method), x)


def test_matches_vit_predict_on_the_command_line():
    base, m, x, want = model1()
    out = run_cli(
        "vit", "predict", "--checkpoint", base / "model.safetensors", "--heads",
        want["config"]["num_heads"], "--input", base / "input.safetensors", "--normalized", "--json",
    )
    cli = np.array([json.loads(line)["logits"] for line in out.splitlines() if line.strip()])
    assert_close(m.predict(x), cli, 1e-6, "logits vs nabla vit predict")


def test_errors():
    base, m, x, want = model1()
    with pytest.raises(ValueError, match="channels"):
        m.predict(np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        m.predict(np.zeros((28, 28), np.float32))
    with pytest.raises(ValueError, match="--heads is needed"):
        nabla.load_vit(base / "model.safetensors")
    with pytest.raises(ValueError, match="pool"):
        nabla.load_vit(base / "model.safetensors", heads=4, pool="max")
