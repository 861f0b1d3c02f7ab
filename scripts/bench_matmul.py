#!/usr/bin/env python3
"""PyTorch reference for `nabla bench matmul`: the same shapes, thread counts and JSON lines.

Run side by side with nabla on the same machine:
    python3 scripts/bench_matmul.py --json > torch.jsonl
    cargo run --release -- bench matmul --json > nabla.jsonl
    python3 scripts/compare_bench.py nabla.jsonl torch.jsonl
"""
import argparse
import json
import os

import torch

from benchutil import measure

SHAPES = [(64, 64, 64), (128, 128, 128), (256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (32, 256, 256)]




def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--min-time", type=float, default=0.5)
    args = ap.parse_args()
    all_threads = os.cpu_count() or 1
    counts = [1] + ([all_threads] if all_threads > 1 else [])
    for th in counts:
        torch.set_num_threads(th)
        for m, n, k in SHAPES:
            a = torch.randn(m, k)
            b = torch.randn(k, n)
            c = torch.empty(m, n)
            med, lo, hi, reps = measure(lambda: torch.mm(a, b, out=c), min_time=args.min_time)
            rec = {"name": "matmul", "impl": "torch", "m": m, "n": n, "k": k, "dtype": "f32", "threads": th,
                   "median_s": med, "min_s": lo, "max_s": hi, "reps": reps, "gflops": 2 * m * n * k / med / 1e9}
            if args.json:
                print(json.dumps(rec), flush=True)
            else:
                print(f"matmul m={m} n={n} k={k} threads={th}: {med*1e3:.3f} ms  {rec['gflops']:.1f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
