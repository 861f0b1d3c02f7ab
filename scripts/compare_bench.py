#!/usr/bin/env python3
"""Joins two JSONL benchmark outputs (nabla's and a PyTorch script's) on their configuration keys
and prints the speed ratio torch_median / nabla_median (> 1 means nabla is faster).

    python3 scripts/compare_bench.py nabla.jsonl torch.jsonl
"""
import json
import sys

SKIP = {"median_s", "min_s", "max_s", "reps", "impl", "gflops", "items_per_s", "images_per_s", "tokens_per_s",
        "gb_per_s", "bandwidth_fraction", "flops", "gflops_achieved", "matmul_fraction",
        "thread_cpu_median_s", "torch", "bytes", "gbs", "copy_gbs", "bw_fraction", "fraction_of_matmul",
        "gflop_per_step", "matmul512_gflops", "fma_peak_gflops", "fraction_of_peak", "peak_step_ms",
        "fraction_of_bandwidth", "copy_bandwidth_gbs", "copy_bandwidth_gbs_1_thread",
        # Descriptions one side reports and the other does not (the GNN rows).
        "backend", "input_dropout", "edges_with_self_loops", "feature_nnz", "features"}


def key(r):
    """A row's configuration: its parameters without the measurements. The PyTorch scripts
    name their rows "torch_<name>", "<name>_torch" or "pyg_<name>"; the name is normalized in place."""
    r["name"] = r["name"].removeprefix("torch_").removeprefix("pyg_").removesuffix("_torch")
    return tuple(sorted((k, str(v)) for k, v in r.items() if k not in SKIP))


def rows(lines):
    """Rows keyed by configuration; a configuration measured several times keeps the last."""
    return {key(r): r for r in (json.loads(l) for l in map(str.strip, lines) if l.startswith("{"))}


def load(path):
    with open(path) as f:
        return rows(f)


def main():
    a, b = load(sys.argv[1]), load(sys.argv[2])
    print(f"{'configuration':<70} {'nabla ms':>10} {'torch ms':>10} {'ratio':>7}")
    for key, ra in a.items():
        rb = b.get(key)
        if rb is None:
            continue
        cfg = " ".join(f"{k}={v}" for k, v in key)
        print(f"{cfg:<70} {ra['median_s']*1e3:>10.3f} {rb['median_s']*1e3:>10.3f} {rb['median_s']/ra['median_s']:>7.2f}")


if __name__ == "__main__":
    main()
