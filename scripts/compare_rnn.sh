#!/usr/bin/env bash
# nabla vs PyTorch, side by side on the same cores: the Elman RNN training-step benchmark
# (alternating per hidden size, so both run within the same minute) and the character-level
# language model with the same wall-clock budget: both at once on disjoint core sets when the
# machine has 2×THREADS cores, otherwise one after the other on the same THREADS cores.
#
#   BIN=target/release/nabla TEXT=path/to/input.txt LM_SECONDS=600 scripts/compare_rnn.sh OUTDIR
set -u
OUT=${1:-/tmp/rnn-compare}
BIN=${BIN:-target/release/nabla}
TEXT=${TEXT:-../shared/data/tinyshakespeare/input.txt}
THREADS=${THREADS:-2}
LM_SECONDS=${LM_SECONDS:-600}
BENCH_TIME=${BENCH_TIME:-2}
mkdir -p "$OUT"
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
A="0-$((THREADS - 1))"
B="$THREADS-$((2 * THREADS - 1))"
nproc > "$OUT/nproc.txt"
python3 -c 'import torch; print(torch.__version__, torch.get_num_threads())' > "$OUT/torch.txt" 2>&1
for H in 64 256 1024; do
  taskset -c "$A" "$BIN" bench rnn --hidden "$H" --json --min-time "$BENCH_TIME" >> "$OUT/bench_nabla.jsonl" 2>> "$OUT/bench.err"
  taskset -c "$A" python3 scripts/bench_rnn.py --hidden "$H" --threads "$THREADS" --min-time "$BENCH_TIME" >> "$OUT/bench_torch.jsonl" 2>> "$OUT/bench.err"
done
[ "$LM_SECONDS" = 0 ] && exit 0
nabla_lm() {
  taskset -c "$1" "$BIN" rnn train --text "$TEXT" --time-limit "$LM_SECONDS" --steps 100000000 \
    --out "$OUT/lm_nabla" --overwrite > "$OUT/lm_nabla.json" 2> "$OUT/lm_nabla.log"
}
torch_lm() {
  taskset -c "$1" python3 scripts/char_rnn.py --text "$TEXT" --time-limit "$LM_SECONDS" --steps 100000000 \
    --threads "$THREADS" > "$OUT/lm_torch.jsonl" 2>&1
}
if [ "$(nproc)" -ge $((2 * THREADS)) ]; then
  nabla_lm "$A" & torch_lm "$B" & wait
else
  nabla_lm "$A"; torch_lm "$A"
fi
