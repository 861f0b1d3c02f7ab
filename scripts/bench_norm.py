#!/usr/bin/env python3
"""PyTorch reference for `nabla bench norm`: forward+backward of BatchNorm (training mode),
LayerNorm over the last axis F, InstanceNorm (affine) and GroupNorm on (N, C, F) float32,
timed like nabla's bench (warm-up, then repeat until --min-time; median seconds per call).
Gradients are taken with torch.autograd.grad (no accumulation into .grad).

    python3 scripts/bench_norm.py [--layer batch|layer|instance|group] [--shape N,C,F]
                                  [--groups 4] [--min-time 0.5] [--warmup 2] [--json]
"""
import argparse
import json
import time

import torch

from benchutil import measure
import torch.nn.functional as F




def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layer", choices=["batch", "layer", "instance", "group"])
    ap.add_argument("--shape")
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    shapes = [tuple(int(v) for v in a.shape.split(","))] if a.shape else [(256, 64, 1024), (32, 8, 16)]
    layers = [a.layer] if a.layer else ["batch", "layer", "instance", "group"]
    g = torch.Generator().manual_seed(0)
    for (n, c, f) in shapes:
        x = torch.randn(n, c, f, generator=g).requires_grad_(True)
        dy = torch.randn(n, c, f, generator=g)
        for layer in layers:
            p = c if layer != "layer" else f
            w = (1 + 0.01 * torch.arange(p, dtype=torch.float32)).requires_grad_(True)
            b = (0.01 * torch.arange(p, dtype=torch.float32)).requires_grad_(True)
            rm, rv = torch.zeros(c), torch.ones(c)
            if layer == "batch":
                fwd = lambda: F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
            elif layer == "layer":
                fwd = lambda: F.layer_norm(x, (f,), w, b, 1e-5)
            elif layer == "instance":
                fwd = lambda: F.instance_norm(x, weight=w, bias=b, use_input_stats=True, eps=1e-5)
            else:
                fwd = lambda: F.group_norm(x, a.groups, w, b, 1e-5)

            def step():
                y = fwd()
                torch.autograd.grad(y, (x, w, b), dy)

            med, lo, hi, reps = measure(step, a.warmup, a.min_time)
            r = {"name": "norm_torch", "layer": layer, "shape": [n, c, f], "dtype": "f32",
                 "threads": torch.get_num_threads(), "median_s": med, "min_s": lo, "max_s": hi,
                 "reps": reps, "torch": torch.__version__}
            if a.json:
                print(json.dumps(r))
            else:
                print(f"norm_torch {layer:<9} shape={n},{c},{f} median {med*1e3:10.3f} ms "
                      f"(min {lo*1e3:.3f}, max {hi*1e3:.3f}, {reps} reps)")


if __name__ == "__main__":
    main()
