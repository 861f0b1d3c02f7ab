"""The TensorBoard events file of a training run, read back with TensorBoard's own reader.

A tiny `nabla gnn train` run (a 4-node graph, 3 epochs, then resumed to 6) writes
`events.out.tfevents.*` next to its `metrics.jsonl`; TensorBoard's `EventAccumulator` must
find every scalar of `metrics.jsonl` there: the same tags, steps and values (as float32),
nothing else — after the resume too, which adds a second file.

The binary: $NABLA_BIN, else target/release/nabla or target/debug/nabla under the repository
root (the newer of the two); the test is skipped, saying so, when there is none.
"""

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="TensorBoard (pip install tensorboard) reads the events file",
)
event_file_loader = pytest.importorskip(
    "tensorboard.backend.event_processing.event_file_loader"
)
from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: E402
from tensorboard.summary.writer import record_writer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# The fields of a metrics.jsonl record that are not scalars of the run (see
# src/train/metrics.rs, src/train/final_test.rs and src/train/tfevents.rs).
RECORD_NOT_SCALAR = {"step", "logged_train_loss"}
TEST_NOT_SCALAR = {"test", "step", "selected_step", "selected_by", "weights"}


def nabla_binary():
    env = os.environ.get("NABLA_BIN")
    if env:
        if not os.access(env, os.X_OK):
            pytest.fail(f"NABLA_BIN={env} is not an executable file")
        return env
    found = [
        p for p in (ROOT / "target/release/nabla", ROOT / "target/debug/nabla")
        if p.is_file() and os.access(p, os.X_OK)
    ]
    if not found:
        pytest.skip(
            "no nabla binary: set NABLA_BIN or run `cargo build` "
            f"(looked for target/release/nabla and target/debug/nabla under {ROOT})"
        )
    return str(max(found, key=lambda p: p.stat().st_mtime))


def f32(x):
    """x rounded to float32, as the events file stores it."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def write_graph(d: Path):
    (d / "features.tsv").write_text("0\t0,2\n1\t1\n2\t0\n3\t2\n")
    (d / "labels.tsv").write_text("0\t0\n1\t1\n2\t1\n3\t0\n")
    (d / "edges.tsv").write_text("0\t1\n1\t0\n1\t2\n2\t1\n2\t3\n3\t2\n")
    (d / "split.tsv").write_text("0\ttrain\n1\ttrain\n2\tval\n3\ttest\n")


def expected_scalars(metrics_jsonl: Path):
    """{tag: [(step, float32 value), ...]} of every scalar of metrics.jsonl, in step order."""
    out = {}

    def add(tag, step, value):
        out.setdefault(tag, []).append((step, f32(value)))

    for line in metrics_jsonl.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("test"):
            for k, v in rec.items():
                if k not in TEST_NOT_SCALAR:
                    add(k, rec["step"], v)
            continue
        # The training loss at log resolution; a record without it had at most one log line
        # in its interval, ending at the evaluation: its mean is train_loss.
        for step, loss in rec.get("logged_train_loss") or [(rec["step"], rec["train_loss"])]:
            add("logged_train_loss", step, loss)
        for k, v in rec.items():
            if k not in RECORD_NOT_SCALAR:
                add(k, rec["step"], v)
    return out


def accumulator(run: Path):
    return event_accumulator.EventAccumulator(
        str(run), size_guidance={event_accumulator.SCALARS: 0}
    )


def tensorboard_scalars(run: Path, acc=None):
    acc = acc or accumulator(run)
    acc.Reload()
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }


def train(nabla, data, *args):
    cmd = [nabla, "gnn", "train", "--data", str(data), "--model", "gat", "--seed", "3",
           "--patience", "100", "--plain", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{cmd}: {p.stderr}"
    assert "panicked" not in p.stderr


def test_events_file_holds_every_scalar_of_metrics_jsonl(tmp_path):
    nabla = nabla_binary()
    data = tmp_path / "data"
    data.mkdir()
    write_graph(data)
    run = tmp_path / "runs" / "gat"
    train(nabla, data, "--epochs", "3", "--out", str(run))

    files = sorted(run.glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    first = next(iter(event_file_loader.EventFileLoader(str(files[0])).Load()))
    assert first.file_version == "brain.Event:2"

    want = expected_scalars(run / "metrics.jsonl")
    assert {"train_loss", "lr", "items_per_s", "val_acc", "test_acc"} <= set(want)
    live = accumulator(run)
    assert tensorboard_scalars(run, live) == want

    # As if the session had crashed after writing step 4, past its checkpoint at step 3.
    orphan = event_pb2.Event(wall_time=2e9, step=4, summary=summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag="val_acc", simple_value=-1.0)]))
    with open(files[0], "ab") as f:
        record_writer.RecordWriter(f).write(orphan.SerializeToString())

    # A resumed run adds a second events file, whose session start drops the steps from 4 on:
    # TensorBoard shows the run once, 6 evaluations and the test record of the finished run,
    # as metrics.jsonl; so does a TensorBoard that was watching it (the same accumulator,
    # reloaded).
    train(nabla, data, "--epochs", "6", "--resume", str(run))
    files = sorted(run.glob("events.out.tfevents.*"))
    assert len(files) == 2, files
    want = expected_scalars(run / "metrics.jsonl")
    assert [s for s, _ in want["val_acc"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in want["test_acc"]] == [6]
    assert tensorboard_scalars(run) == want
    assert tensorboard_scalars(run, live) == want
