#!/usr/bin/env bash
# Everything GPU-side in one call: install fastalex, measure the card's copy bandwidth, run the
# test suite on CUDA, then the benchmarks, and write it all into RESULTS_DIR. Prints the tests'
# last lines and the summary (a table, then each target's verdict) last.
#
# usage: bench/gpu_check.sh RESULTS_DIR [targets|all|rehearse]
#   targets (default): the benchmark cases the targets name, each against its baseline; fits
#     8 minutes on an H100/H200 with cold compiles and autotuning.
#   all: every benchmark case (fp32/TF32, forward only, NCHW, every baseline): 20+ minutes.
#   rehearse: the same flow on a CPU (Triton's interpreter, the benchmarks' smoke shapes, CPU
#     timings marked as a rehearsal) under an 8-minute deadline, so that an error in this script
#     or in a suite's set-up shows in CI, not on a GPU. Exits non-zero where a phase fails.
#
# Every phase has a time limit inside the whole check's deadline; each benchmark case is
# appended to bench.jsonl as soon as it is measured, so a phase cut off keeps what it measured.
# Files written: env.txt, copy_bandwidth.json, tests.log, bench.log, bench.jsonl, summary.txt.
set -u
OUT=${1:?usage: bench/gpu_check.sh RESULTS_DIR [targets|all|rehearse]}
SCOPE=${2:-targets}
case "$SCOPE" in targets|all|rehearse) ;; *) echo "unknown scope '$SCOPE' (targets, all or rehearse)"; exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
export PYTHONUNBUFFERED=1 FASTALEX_BENCH_JSONL="$OUT/bench.jsonl"
# Autotuning results and compiled kernels persist across the phases' processes (and a rerun on
# the same machine); outside RESULTS_DIR, whose files travel back.
export TRITON_CACHE_AUTOTUNING=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/fastalex-triton-cache}
if [ "$SCOPE" = rehearse ]; then
  export TRITON_INTERPRET=1 FASTALEX_BENCH_REHEARSE=1
  # CPU phases pay ~20 s of imports each; the interpreter's timings mean nothing, so every
  # suite gets the same limit
  DEADLINE=$((START + 480)) TESTS_LIMIT=40 SUITE_LIMIT=60
else
  unset TRITON_INTERPRET FASTALEX_BENCH_REHEARSE
  DEADLINE=$((START + 475)) TESTS_LIMIT=150 SUITE_LIMIT=""
fi
rm -f "$FASTALEX_BENCH_JSONL"
FAILED=""  # phases that failed (rehearse: any; GPU run: install and summary)

now() { echo $(($(date +%s) - START)); }
left() { echo $((DEADLINE - $(date +%s))); }
# limit SECONDS: the smaller of SECONDS and the time left before the deadline (at least 1)
limit() { local l; l=$(left); [ "$1" -lt "$l" ] && l=$1; [ "$l" -lt 1 ] && l=1; echo "$l"; }
# ok CODE: a phase's exit code is acceptable (0; 124 = cut off by its limit; 5 = nothing selected)
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 124 ] || [ "$1" -eq 5 ]; }

{
  echo "== environment ($SCOPE)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  else
    echo "no nvidia-smi"
  fi
  python -c "import sys, torch, triton; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__)"
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  echo "== install ($(now) s)"
} >"$OUT/env.txt" 2>&1
if ! pip install --no-deps --no-build-isolation -e . >>"$OUT/env.txt" 2>&1; then
  echo "install failed"; tail -n 20 "$OUT/env.txt"; exit 1
fi

echo "== copy bandwidth ($(now) s)" >>"$OUT/env.txt"
timeout 60 python bench/copy_bandwidth.py >"$OUT/copy_bandwidth.json" 2>>"$OUT/env.txt"
code=$?; ok $code || FAILED="$FAILED copy_bandwidth($code)"

echo "== tests ($(now) s)" >>"$OUT/env.txt"
# Kernel compiles dominate the suite on a GPU: spread them over the CPU's cores when xdist is there.
PARALLEL=()
if python -c "import xdist" 2>/dev/null; then
  PARALLEL=(-n "$(python -c 'import os; print(max(1, min(8, len(os.sched_getaffinity(0)))))')")
fi
timeout "$(limit "$TESTS_LIMIT")" python -m pytest tests -q -p no:cacheprovider "${PARALLEL[@]}" \
  --durations=10 >"$OUT/tests.log" 2>&1
code=$?
echo "pytest exit code $code at $(now) s" >>"$OUT/tests.log"
[ "$SCOPE" = rehearse ] && { ok $code || FAILED="$FAILED tests($code)"; }

echo "== benchmarks ($(now) s)" >>"$OUT/env.txt"
# suite, its time limit in seconds and the cases it runs by default (a pytest -k expression)
while read -r suite seconds cases; do
  [ -f "bench/bench_$suite.py" ] || { FAILED="$FAILED bench_$suite(missing)"; continue; }
  [ "$SCOPE" = all ] && cases=""
  seconds=${SUITE_LIMIT:-$seconds}
  [ "$(left)" -le 5 ] && { echo "-- bench_$suite: no time left" >>"$OUT/bench.log"; continue; }
  echo "-- bench_$suite (-k '$cases', limit $(limit "$seconds") s, at $(now) s)" >>"$OUT/bench.log"
  timeout "$(limit "$seconds")" python -m pytest "bench/bench_$suite.py" --benchmark-only -q \
    -p no:cacheprovider ${cases:+-k "$cases"} --benchmark-columns=median,iqr,rounds \
    >>"$OUT/bench.log" 2>&1
  code=$?
  echo "-- exit code $code" >>"$OUT/bench.log"
  [ "$SCOPE" = rehearse ] && { ok $code || FAILED="$FAILED bench_$suite($code)"; }
done <<'SUITES'
lrn 50 fwdbwd
dropout 15 not compile
max_pool 25 fwdbwd and cl and not compile
linear 40 bf16 and not compile
conv 80 bf16 and not compile
train_step 110 bf16
data 60 imagenet or prepared
SUITES

echo "== summary ($(now) s)" >>"$OUT/env.txt"
if ! python bench/summarize.py --copy "$OUT/copy_bandwidth.json" "$FASTALEX_BENCH_JSONL" \
    >"$OUT/summary.txt" 2>&1; then
  FAILED="$FAILED summary"
fi
if [ "$SCOPE" = rehearse ] && [ ! -s "$FASTALEX_BENCH_JSONL" ]; then
  FAILED="$FAILED bench.jsonl(empty)"
fi
tail -n 3 "$OUT/tests.log"
cat "$OUT/summary.txt"
echo "== done ($(now) s)${FAILED:+; failed:$FAILED}" | tee -a "$OUT/env.txt"
[ -z "$FAILED" ]
