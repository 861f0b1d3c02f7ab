#!/usr/bin/env bash
# A/B of nabla's MPI data parallelism on one machine (issue 18, item 7): `nabla bench vit`
# (the MNIST ViT: dim 64, depth 4, batch 128 = 4 micro-batches of 32) as
#   1x2     one process, 2 rayon threads
#   2x1     mpirun -np 2, 1 thread per rank, reduction overlapped with backward (NABLA_DIST_OVERLAP=1)
#   2x1-off the same with NABLA_DIST_OVERLAP=0 (reduction after the whole backward; the
#           default when, as on 2 cores, a rank has no core to spare for the comm thread)
#   2x1-spin (only with SPIN=1) overlap on, Open MPI busy-polling (OMPI_MCA_mpi_yield_when_idle=0)
# alternated REPS times (default 5); prints each run's step time with the load average, then
# the medians and the ratios to 1x2 (goal: 2x1 / 1x2 <= 1.15).
# Usage: scripts/mpi_ab.sh [REPS] [MIN_TIME_S]   (NABLA=/path/to/nabla, default: the release
# build of this checkout, `cargo build --release --features mpi`)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${NABLA:-$here/../target/release/nabla}
reps=${1:-5}
min_time=${2:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
configs=(1x2 2x1 2x1-off)
[ "${SPIN:-0}" = 1 ] && configs+=(2x1-spin)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() {
    local args=(bench vit --json --min-time "$min_time")
    case $1 in
    1x2) RAYON_NUM_THREADS=2 "$bin" "${args[@]}" ;;
    2x1) mpirun -np 2 --bind-to none -x RAYON_NUM_THREADS=1 -x NABLA_DIST_OVERLAP=1 \
        "$bin" "${args[@]}" ;;
    2x1-off) mpirun -np 2 --bind-to none -x RAYON_NUM_THREADS=1 -x NABLA_DIST_OVERLAP=0 \
        "$bin" "${args[@]}" ;;
    2x1-spin) mpirun -np 2 --bind-to none -x RAYON_NUM_THREADS=1 \
        -x NABLA_DIST_OVERLAP=1 -x OMPI_MCA_mpi_yield_when_idle=0 "$bin" "${args[@]}" ;;
    esac
}
"$bin" info | grep -i -E "cpu|model|isa" | head -3 || true
for r in $(seq 1 "$reps"); do
    for c in "${configs[@]}"; do
        load=$(cut -d' ' -f1 /proc/loadavg)
        run "$c" >"$out/$c.$r.json"
        python3 - "$out/$c.$r.json" "$c" "$r" "$load" <<'PY'
import json, sys
v = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
c, r, load = sys.argv[2:]
extra = ""
if "comm_s_per_step" in v and v.get("ranks", 1) > 1:
    extra = f"  comm {v['comm_s_per_step']*1e3:6.2f} ms  exposed {v['exposed_comm_s_per_step']*1e3:6.2f} ms"
print(f"round {r}  {c:8s}  load {load:>5}  step {v['median_s']*1e3:7.2f} ms{extra}")
PY
    done
done
python3 - "$out" "${configs[@]}" <<'PY'
import json, statistics, sys, glob
out, configs = sys.argv[1], sys.argv[2:]
med = {}
for c in configs:
    runs = [json.loads(open(f).read().strip().splitlines()[-1]) for f in sorted(glob.glob(f"{out}/{c}.*.json"))]
    med[c] = statistics.median(v["median_s"] for v in runs)
    line = f"median {c:8s} {med[c]*1e3:7.2f} ms/step"
    if runs[0].get("ranks", 1) > 1:
        line += f"  comm {statistics.median(v['comm_s_per_step'] for v in runs)*1e3:.2f} ms"
        line += f"  exposed {statistics.median(v['exposed_comm_s_per_step'] for v in runs)*1e3:.2f} ms"
        line += f"  bytes reduced/step {runs[0]['bytes_reduced_per_step']:.0f}"
    print(line)
for c in configs[1:]:
    print(f"ratio {c} / 1x2 = {med[c] / med['1x2']:.3f}")
PY
