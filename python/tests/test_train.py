"""nabla.train and nabla.reproduce against the command line; Ctrl-C during training."""

import json
import os
import subprocess
import sys

import pytest

import nabla
from conftest import run_cli

# A tiny character model on the built-in corpus: a few hundred milliseconds.
TINY = dict(hidden=8, batch=2, k1=5, k2=5, eval_every=3, log_every=2, plot="none", seed=3)


def flags(d):
    out = []
    for k, v in d.items():
        out += ["--" + k.replace("_", "-"), str(v)]
    return out


def test_train_returns_the_final_metrics_of_the_cli_run(tmp_path):
    m = nabla.train("rnn", out=tmp_path / "py", steps=6, **TINY)
    assert m["run_dir"] == str(tmp_path / "py") and m["step"] == 6
    last = m["last"]
    assert last["step"] == 6 and "val_loss" in last
    assert m["best"]["metric"] == "val_loss"
    assert m["test"] is not None and "test_loss" in json.dumps(m["test"])
    # The same flags on the command line: the same numbers, bit for bit.
    run_cli("rnn", "train", "--out", tmp_path / "cli", "--steps", 6, *flags(TINY))
    lines = (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()
    cli = [json.loads(line) for line in lines if line.strip()]
    cli_last = [r for r in cli if not r.get("test")][-1]
    for k in ("train_loss", "val_loss", "lr", "grad_norm"):
        assert last[k] == cli_last[k], k


def test_flags_are_the_clis(tmp_path):
    with pytest.raises(ValueError, match="--no-such-flag"):
        nabla.train("rnn", out=tmp_path / "a", no_such_flag=1)
    with pytest.raises(ValueError, match="--lr"):
        nabla.train("rnn", out=tmp_path / "a", lr=float("nan"))
    with pytest.raises(ValueError, match="hidden"):
        nabla.train("rnn", out=tmp_path / "a", hidden="many")
    with pytest.raises(ValueError, match="out=DIR"):
        nabla.train("rnn", steps=1)
    with pytest.raises(ValueError, match="unknown task"):
        nabla.train("resnet50", out=tmp_path / "a")


@pytest.mark.skipif(
    os.environ.get("NABLA_PY_CTRL_C_TEST") != "1",
    reason="known hang: on a clean CI clone (2026-12-04) the child's training ran on after its "
    "SIGINT until the 120 s timeout, while it passed when run by hand; opt in with "
    "NABLA_PY_CTRL_C_TEST=1 until the race is found",
)
def test_ctrl_c_saves_a_checkpoint_then_raises_and_resume_continues(tmp_path):
    # In a child interpreter of its own: SIGINT reaches it as it would a notebook kernel,
    # without pytest's own handling of KeyboardInterrupt.
    out = tmp_path / "run"
    script = f"""
import os, signal, threading, nabla
threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    nabla.train("rnn", out={str(out)!r}, steps=10**7, **{TINY!r})
except KeyboardInterrupt as e:
    print("KeyboardInterrupt:", e)
print("still alive")
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "KeyboardInterrupt: training interrupted" in r.stdout, r.stdout + r.stderr
    assert "still alive" in r.stdout
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert 0 < state["step"] < 10**7
    m = nabla.train("rnn", resume=out, steps=state["step"] + 2)
    assert m["step"] == state["step"] + 2


def test_reproduce_is_the_clis_json():
    py = nabla.reproduce()
    assert set(py) >= {"1.2", "1.4", "1.5", "2.2", "4"}
    assert all(e["ok"] for e in py.values()), [k for k, e in py.items() if not e["ok"]]
    assert py == json.loads(run_cli("reproduce", "--json"))
