#!/usr/bin/env python3
"""PyTorch reference for `nabla bench rnn`: median seconds per training step of the assignment's
Elman RNN (h_t = sigmoid(W x_t + U h_{t-1}), y_t = V h_t, L = sum ||z_t - y_t||^2), i.e.
forward + BPTT (autograd) + a plain SGD update, f32 on random data.

torch.nn.RNN has no sigmoid, so the time loop is written by hand. It is given the same help as
nabla's fused op: the input product X W^T and the readout H V^T are hoisted out of the loop as
single matmuls. `--truncate K` detaches the state at t = K, 2K, ... (chunked TBPTT).

`--cell lstm|gru` times the same training step of `torch.nn.LSTM` / `torch.nn.GRU` (one layer,
batch_first; on CPU they run through oneDNN/MKL-DNN kernels) with a linear readout V, against
`nabla bench rnn --cell lstm|gru`. `--truncate K` then runs the sequence in chunks of K steps,
detaching (h, c) between chunks.

Prints one JSON object per configuration per line, with the same fields as `nabla bench rnn --json`.
"""
import argparse
import json
import time

import torch


def step_fn(params, x, z, lr, truncate):
    W, U, V = params
    B, T, _ = x.shape
    h = torch.zeros(B, U.shape[0], dtype=x.dtype)
    a = x @ W.t()  # (B, T, H), hoisted
    hs = []
    for t in range(T):
        if truncate and t > 0 and t % truncate == 0:
            h = h.detach()
        h = torch.sigmoid(a[:, t] + h @ U.t())
        hs.append(h)
    y = torch.stack(hs, 1) @ V.t()  # (B, T, O), hoisted
    loss = ((y - z) ** 2).sum()
    loss.backward()
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad
            p.grad = None
    return loss.item()


def gated_step_fn(cell, V, x, z, lr, truncate):
    T = x.shape[1]
    k = truncate or T
    outs, state = [], None
    for t0 in range(0, T, k):
        if state is not None:
            state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        o, state = cell(x[:, t0:t0 + k], state)
        outs.append(o)
    y = torch.cat(outs, 1) @ V.t()  # (B, T, O)
    loss = ((y - z) ** 2).sum()
    loss.backward()
    with torch.no_grad():
        for p in list(cell.parameters()) + [V]:
            p -= lr * p.grad
            p.grad = None
    return loss.item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--input", type=int, default=64)
    ap.add_argument("--hidden", type=str, default="256", help="comma-separated")
    ap.add_argument("--output", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--truncate", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="0 = torch default")
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cell", choices=["elman", "lstm", "gru"], default="elman")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    for H in [int(s) for s in a.hidden.split(",")]:
        s = 1.0 / H ** 0.5
        gates = {"elman": 1, "lstm": 4, "gru": 3}[a.cell]
        if a.cell == "elman":
            params = [
                ((torch.rand(*shape) * 2 - 1) * s).requires_grad_()
                for shape in [(H, a.input), (H, H), (a.output, H)]
            ]
            run = lambda: step_fn(params, x, z, 1e-6, a.truncate)
        else:
            Cell = torch.nn.LSTM if a.cell == "lstm" else torch.nn.GRU
            cell = Cell(a.input, H, batch_first=True)
            V = ((torch.rand(a.output, H) * 2 - 1) * s).requires_grad_()
            run = lambda: gated_step_fn(cell, V, x, z, 1e-6, a.truncate)
        x = torch.randn(a.batch, a.seq_len, a.input)
        z = torch.randn(a.batch, a.seq_len, a.output)
        for _ in range(a.warmup):
            run()
        times, cpu = [], []
        start = time.perf_counter()
        while len(times) < a.min_reps or time.perf_counter() - start < a.min_time:
            t0, c0 = time.perf_counter(), time.thread_time()
            run()
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        times.sort()
        cpu.sort()
        med = times[len(times) // 2]
        flops = 6.0 * a.seq_len * a.batch * H * (gates * (a.input + H) + a.output)
        name = {"elman": "torch_rnn_train_step", "lstm": "torch_lstm_train_step",
                "gru": "torch_gru_train_step"}[a.cell]
        print(json.dumps({
            "name": name, "cell": a.cell, "batch": a.batch, "input": a.input, "hidden": H,
            "output": a.output, "seq_len": a.seq_len, "truncate": a.truncate or None,
            "activation": "sigmoid" if a.cell == "elman" else "gates", "dtype": "f32", "threads": torch.get_num_threads(),
            "median_s": med, "min_s": times[0], "max_s": times[-1], "reps": len(times),
            "gflops": flops / med / 1e9, "tokens_per_s": a.batch * a.seq_len / med,
            # CPU time of the calling thread per step: with 1 thread, robust to competing processes.
            "thread_cpu_median_s": cpu[len(cpu) // 2],
        }), flush=True)


if __name__ == "__main__":
    main()
