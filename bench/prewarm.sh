#!/bin/sh
# Pre-warmed pool benchmark (benches/prewarm.rs): ccgate → real `claude` → loopback mock.
# Cold vs pre-warmed TTFT / total latency at concurrency 1 and 4, plus idle RSS, in one run.
# Usage: bench/prewarm.sh [output file]   (env: CCGATE_REAL_CLAUDE, PREWARM_BENCH_N, PREWARM_BENCH_SIZE)
set -eu
cd "$(dirname "$0")/.."
out=${1:-/dev/null}
cargo bench --bench prewarm 2>/dev/null | tee "$out"
