#!/usr/bin/env bash
# One call on a GPU machine (torch and triton installed, no package index): install fastalex,
# measure the card's copy bandwidth, run the test suite on CUDA and the benchmarks, and write it
# all into RESULTS_DIR (6 files). Prints a short table last.
#
# usage: bench/gpu_check.sh RESULTS_DIR [all]
#   By default the benchmarks run the cases the issues set targets for, against the baseline
#   each target names: LRN forward+backward against eager and torch.compile; max-pool, dropout,
#   the bf16 convolutions and fc layers against eager; the bf16 training step against eager and
#   torch.compile. With autotuning and the compile baselines that fits the 8-minute budget;
#   "all" runs every case (fp32/TF32, forward only, NCHW, every baseline: over 20 minutes).
#
# Every phase has a time limit and the whole check a deadline of 8 minutes; each benchmark case
# is appended to a JSON-lines file as soon as it is measured, so a phase cut off by its limit
# keeps what it measured.
set -u
OUT=${1:?usage: bench/gpu_check.sh RESULTS_DIR [all]}
SCOPE=${2:-targets}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
DEADLINE=$((START + 475))
export PYTHONUNBUFFERED=1 FASTALEX_BENCH_JSONL="$OUT/bench.jsonl"
unset TRITON_INTERPRET
rm -f "$FASTALEX_BENCH_JSONL"

now() { echo $(($(date +%s) - START)); }
left() { echo $((DEADLINE - $(date +%s))); }
# limit SECONDS: the smaller of SECONDS and the time left before the deadline (at least 1)
limit() { local l; l=$(left); [ "$1" -lt "$l" ] && l=$1; [ "$l" -lt 1 ] && l=1; echo "$l"; }

{
  echo "== environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python -c "import sys, torch, triton; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__)"
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  echo "== install ($(now) s)"
} >"$OUT/env.txt" 2>&1
if ! pip install --no-deps --no-build-isolation -e . >>"$OUT/env.txt" 2>&1; then
  echo "install failed"; tail -n 20 "$OUT/env.txt"; exit 1
fi

echo "== copy bandwidth ($(now) s)" >>"$OUT/env.txt"
timeout 60 python bench/copy_bandwidth.py >"$OUT/copy_bandwidth.json" 2>>"$OUT/env.txt"

echo "== tests on CUDA ($(now) s)" >>"$OUT/env.txt"
timeout "$(limit 140)" python -m pytest tests -q -p no:cacheprovider --durations=10 \
  >"$OUT/tests.log" 2>&1
echo "pytest exit code $? at $(now) s" >>"$OUT/tests.log"

echo "== benchmarks ($(now) s)" >>"$OUT/env.txt"
# suite, its time limit and the cases it runs by default (a pytest -k expression)
while read -r suite seconds cases; do
  [ -f "bench/bench_$suite.py" ] || continue
  [ "$SCOPE" = all ] && cases=""
  [ "$(left)" -le 5 ] && { echo "-- bench_$suite: no time left" >>"$OUT/bench.log"; continue; }
  echo "-- bench_$suite (-k '$cases', limit $(limit "$seconds") s, at $(now) s)" >>"$OUT/bench.log"
  timeout "$(limit "$seconds")" python -m pytest "bench/bench_$suite.py" --benchmark-only -q \
    -p no:cacheprovider ${cases:+-k "$cases"} --benchmark-columns=median,iqr,rounds \
    >>"$OUT/bench.log" 2>&1
  echo "-- exit code $?" >>"$OUT/bench.log"
done <<'SUITES'
lrn 60 fwdbwd
dropout 20 not compile
max_pool 30 fwdbwd and cl and not compile
linear 40 bf16 and not compile
conv 80 bf16 and not compile
train_step 100 bf16
data 15
SUITES

echo "== summary ($(now) s)" >>"$OUT/env.txt"
python bench/summarize.py --copy "$OUT/copy_bandwidth.json" "$FASTALEX_BENCH_JSONL" \
  >"$OUT/summary.txt" 2>&1
tail -n 3 "$OUT/tests.log"
cat "$OUT/summary.txt"
echo "== done ($(now) s)" | tee -a "$OUT/env.txt"
