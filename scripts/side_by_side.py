#!/usr/bin/env python3
"""Runs a nabla benchmark command and its PyTorch script alternately, several rounds, so both
see the same machine within the same minute, and prints per configuration the median (and range)
over rounds of the ratio torch_median / nabla_median (> 1 means nabla is faster).

    python3 scripts/side_by_side.py --rounds 3 \
        --nabla "target/release/nabla bench rnn --hidden 64,256,1024 --json --min-time 1" \
        --torch "python3 scripts/bench_rnn.py --hidden 64,256,1024 --min-time 1"

Both commands must print one JSON object per configuration (as `--json` and the scripts do).
"""
import argparse
import json
import shlex
import statistics
import subprocess

import compare_bench


def rows(cmd):
    out = subprocess.run(shlex.split(cmd), check=True, capture_output=True, text=True).stdout
    return compare_bench.rows(out.splitlines())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nabla", required=True)
    ap.add_argument("--torch", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="one JSON object per configuration")
    a = ap.parse_args()
    ratios, times = {}, {}
    for i in range(a.rounds):
        # Alternate which side goes first, so neither always runs on a warmer machine.
        first, second = (a.nabla, a.torch) if i % 2 == 0 else (a.torch, a.nabla)
        r1, r2 = rows(first), rows(second)
        n, t = (r1, r2) if i % 2 == 0 else (r2, r1)
        for key, rn in n.items():
            if key in t:
                ratios.setdefault(key, []).append(t[key]["median_s"] / rn["median_s"])
                times.setdefault(key, []).append((rn["median_s"], t[key]["median_s"]))
    if not ratios:
        # Usually a new measurement column on one side that compare_bench.SKIP doesn't know.
        raise SystemExit(f"side_by_side: no configuration appears in both outputs\n"
                         f"  nabla keys: {sorted(n)}\n  torch keys: {sorted(t)}")
    for key, rs in ratios.items():
        cfg = " ".join(f"{k}={v}" for k, v in key)
        nm = statistics.median(x[0] for x in times[key]) * 1e3
        tm = statistics.median(x[1] for x in times[key]) * 1e3
        if a.json:
            print(json.dumps({"config": dict(key), "nabla_ms": nm, "torch_ms": tm,
                              "ratio_median": statistics.median(rs), "ratio_min": min(rs),
                              "ratio_max": max(rs), "rounds": len(rs)}))
        else:
            print(f"{cfg}\n    nabla {nm:9.3f} ms  torch {tm:9.3f} ms  ratio median {statistics.median(rs):5.2f}"
                  f"  (min {min(rs):.2f}, max {max(rs):.2f}, {len(rs)} rounds)")


if __name__ == "__main__":
    main()
