#!/usr/bin/env bash
# Every `nabla bench` beside its PyTorch / PyG script, alternating rounds (scripts/side_by_side.py),
# on THREADS threads; writes one JSONL file per benchmark into OUT and prints the tables.
#
#   PY=/path/to/python-with-torch BIN=target/release/nabla THREADS=2 scripts/side_by_side_all.sh OUT
# With NABLA_ISA=avx2 (or scalar) in the environment, nabla runs that kernel path.
# ONLY=vit,gnn_gat runs only the named benchmarks (matmul rnn norm vit gnn_gat gnn_transformer).
set -eu
OUT=${1:-/tmp/side-by-side}
BIN=$(realpath "${BIN:-target/release/nabla}")
PY=${PY:-python3}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mkdir -p "$OUT"
cd "$(dirname "$0")"
"$BIN" info --json > "$OUT/info.json"
echo "# $("$BIN" info | sed -n 2,6p | tr '\n' ';') NABLA_ISA=${NABLA_ISA:-auto}"
sbs() {  # name, nabla command, torch command
  if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$1,"* ]]; then return; fi
  echo "## $1"
  "$PY" side_by_side.py --rounds "$ROUNDS" --json --nabla "$BIN $2" --torch "$PY $3" > "$OUT/$1.jsonl"
  "$PY" -c 'import json,sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    c = " ".join(f"{k}={v}" for k, v in d["config"].items() if k not in ("name", "dtype"))
    n, t, r = d["nabla_ms"], d["torch_ms"], d["ratio_median"]
    print(f"  {c:<78} nabla {n:9.3f} ms  torch {t:9.3f} ms  ratio {r:5.2f}")' "$OUT/$1.jsonl"
}
sbs matmul "bench matmul --json" "bench_matmul.py --json"
sbs rnn "bench rnn --hidden 64,256,1024 --json --min-time 1" "bench_rnn.py --hidden 64,256,1024 --threads $THREADS --min-time 1"
sbs norm "bench norm --json" "bench_norm.py --json"
sbs vit "bench vit --json --min-time 3" "bench_vit.py --threads $THREADS --min-time 3"
for m in gat transformer; do
  sbs "gnn_$m" "bench gnn --model $m --json" "bench_gnn.py --model $m --json --threads $THREADS"
done
