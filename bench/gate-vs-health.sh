#!/bin/sh
# bench/gate-vs-health.sh: req/s of the health-gate 401 against GET /health (issue 17).
#
# Builds ccgate in release and starts it on a free 127.0.0.1 port with the fake CLI logged
# out (FAKE_CLAUDE_SCENARIO=not_logged_in): the startup probe closes the health gate, so
# every POST /v1/chat/completions is answered 401 without spawning anything, and still
# writes its `request` log line. Then `wrk -t2 -c32 -d10s` on GET /health and on the
# gated POST (bench/gate-post.lua), alternately, and prints both req/s and the ratio
# gated / health (goal: >= 0.7). Every gated answer must be the 401.
#
# Environment: BENCH_ROUNDS (default 3: each endpoint measured that many times, alternately;
# the machine is shared, so look at every round and the median), BENCH_SECS (default 10), BENCH_CONNS (default 32),
# BENCH_LOG (where ccgate's stderr goes, default a file in the temp dir; /dev/null is the
# cheapest sink), BENCH_LOG_FORMAT (text or json, default text), BENCH_BIN (a ccgate
# binary to measure instead of building this checkout, e.g. an older build), BENCH_KEYS
# (set: a keys file with one key with limits, which the gated POST carries; the usage
# ledger is on in any case for a build with issue 23), CARGO_TARGET_DIR.
# Needs wrk (Debian: apt-get install -y wrk).
set -eu

cd "$(dirname "$0")/.."
ROOT=$PWD
: "${CARGO_TARGET_DIR:=$ROOT/target}"
export CARGO_TARGET_DIR
ROUNDS=${BENCH_ROUNDS:-3}
SECS=${BENCH_SECS:-10}
CONNS=${BENCH_CONNS:-32}
FORMAT=${BENCH_LOG_FORMAT:-text}

if ! command -v wrk >/dev/null 2>&1; then
    echo "wrk not found; installing it from Debian (apt-get install -y wrk)" >&2
    apt-get install -y wrk >/dev/null
fi

if [ -n "${BENCH_BIN:-}" ]; then
    BIN=$BENCH_BIN
else
    echo "== building (release)"
    cargo build --release --quiet --bin ccgate
    BIN=$CARGO_TARGET_DIR/release/ccgate
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ccgate-gatebench.XXXXXX")
LOG=${BENCH_LOG:-$TMP/ccgate.log}
PID=
# shellcheck disable=SC2317,SC2329 # (called from the EXIT trap)
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
echo "== starting ccgate (fake CLI logged out; log: $LOG, format $FORMAT)"
# From the temp dir so no config/ccgate.yaml applies; the listen address is found with ss
# (the log may go to /dev/null).
if [ -n "${BENCH_KEYS:-}" ]; then
    printf 'keys:\n  - name: bench\n    sha256: "%s"\n    limits:\n      requests_per_minute: 1000000000\n' \
        "$(printf %s bench-key | sha256sum | cut -d' ' -f1)" >"$TMP/keys.yaml"
    CCGATE_KEYS=$TMP/keys.yaml
    BENCH_AUTH="Bearer bench-key"
    export CCGATE_KEYS BENCH_AUTH
fi
cd "$TMP"
CCGATE_CLI__COMMAND=$ROOT/tests/fake-claude \
    FAKE_CLAUDE_SCENARIO=not_logged_in \
    CCGATE_LISTEN=127.0.0.1:0 \
    CCGATE_RULES=$TMP/no-rules.yaml \
    CCGATE_WATCH_RULES=false \
    CCGATE_LOG_LEVEL=${BENCH_LOG_LEVEL:-info} \
    CCGATE_LOG_FORMAT=$FORMAT \
    "$BIN" serve 2>"$LOG" &
PID=$!
cd "$ROOT"

URL=
i=0
while [ $i -lt 100 ]; do
    PORT=$(ss -Hltnp 2>/dev/null | grep "pid=$PID," | sed -n 's/.*127\.0\.0\.1:\([0-9][0-9]*\) .*/\1/p' | head -n 1)
    if [ -n "$PORT" ] && curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
        URL=http://127.0.0.1:$PORT
        break
    fi
    kill -0 "$PID" 2>/dev/null || { echo "ccgate exited at start" >&2; cat "$LOG" >&2; exit 1; }
    sleep 0.1
    i=$((i + 1))
done
[ -n "$URL" ] || { echo "ccgate did not start listening" >&2; exit 1; }

# The startup probe must have closed the gate.
i=0
until curl -s "$URL/metrics" | grep -q '^ccgate_cli_health_ok 0$'; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "the probe did not close the gate" >&2; exit 1; }
    sleep 0.1
done
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    -H "Authorization: ${BENCH_AUTH:-none}" \
    -d '{"model":"sonnet","messages":[{"role":"user","content":"hello"}]}' "$URL/v1/chat/completions")
[ "$code" = 401 ] || { echo "gated POST answered $code, not 401" >&2; exit 1; }
echo "ccgate pid $PID on $URL: gate closed (401)"

rps() { sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p'; }
total() { sed -n 's/^ *\([0-9][0-9]*\) requests in .*/\1/p'; }
# ccgate's CPU time (user + system, all threads) in clock ticks, to report CPU per request:
# on a shared machine req/s moves with the neighbours' load, CPU per request much less.
ticks() { awk '{ print $14 + $15 }' "/proc/$PID/stat"; }
HZ=$(getconf CLK_TCK)
us_per() { awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'; }
r=1
HEALTH_ALL=
GATE_ALL=
RATIOS=
while [ "$r" -le "$ROUNDS" ]; do
    t0=$(ticks)
    hout=$(wrk -t2 -c"$CONNS" -d"${SECS}s" "$URL/health")
    t1=$(ticks)
    out=$(wrk -t2 -c"$CONNS" -d"${SECS}s" -s "$ROOT/bench/gate-post.lua" "$URL")
    t2=$(ticks)
    h=$(printf '%s\n' "$hout" | rps)
    g=$(printf '%s\n' "$out" | rps)
    hcpu=$(us_per $((t1 - t0)) "$(printf '%s\n' "$hout" | total)")
    gcpu=$(us_per $((t2 - t1)) "$(printf '%s\n' "$out" | total)")
    st=$(printf '%s\n' "$out" | sed -n 's/^statuses: //p')
    case $st in
        401x*) case $st in *" "*) echo "gated POST got other statuses: $st" >&2; exit 1 ;; esac ;;
        *) echo "gated POST got other statuses: $st" >&2; exit 1 ;;
    esac
    ratio=$(awk -v g="$g" -v h="$h" 'BEGIN { printf "%.2f", g / h }')
    printf 'round %d: /health %6.0f req/s %5s us CPU/req   gated 401 %6.0f req/s %5s us CPU/req   ratio %s   (%s)\n' \
        "$r" "$h" "$hcpu" "$g" "$gcpu" "$ratio" "$st"
    HEALTH_ALL="$HEALTH_ALL $h"
    GATE_ALL="$GATE_ALL $g"
    RATIOS="$RATIOS $ratio"
    r=$((r + 1))
done
dropped=$(curl -s "$URL/metrics" | sed -n 's/^ccgate_log_lines_dropped_total \([0-9]*\)$/\1/p')
echo "log lines written: $(wc -l <"$LOG" 2>/dev/null || echo '?'); ccgate_log_lines_dropped_total: ${dropped:-n/a}"
median=$(printf '%s\n' $RATIOS | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
echo "ratios (gated / health):$RATIOS   median $median   goal >= 0.70"
