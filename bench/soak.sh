#!/bin/sh
# bench/soak.sh: soak run of ccgate (issue 7) against the fake CLI.
#
# Builds ccgate and the load generator (examples/soak.rs) in release, starts ccgate as a
# separate process on a free 127.0.0.1 port (it binds :0; the port is read from its log)
# with the fake CLI, a temp copy of rules/rules.yaml, cli.max_concurrent=8 and kept
# conversation processes ending 2 s after their last turn (so the settle sees none), runs the
# generator (which sends the request mix, reloads the rules, samples /proc/<pid> and
# asserts; see the top of examples/soak.rs), then stops ccgate with SIGTERM and checks it
# exits cleanly. Exit status: 0 only if every assertion passed.
#
# Environment: SOAK_MINUTES (default 2), SOAK_SECS (overrides the minutes, for short
# trial runs), SOAK_CLIENTS (default 8), CARGO_TARGET_DIR,
# SOAK_KEEP=1 keeps the temp dir (ccgate log) for inspection,
# SOAK_RSS_WARMUP_SECS (default 60, at most half the run): the RSS trend (last third of the
# samples at most 20 % above the first third) counts only samples taken after this much
# load. ccgate's RSS rises during the first minute while the allocator's working set fills
# (glibc's per-thread arenas, buffers of the largest requests) and is flat afterwards; see
# bench/README.md, "RSS during the warm-up". Run SOAK_MINUTES=10 to see the plateau.
#
# Hostile clients run alongside the normal ones (SOAK_HOSTILE_CLIENTS workers, default 2,
# and SOAK_SLOWLORIS_CONNS slowloris connections, default 4). What each must get:
#
#   hostile category         what is sent                                        expected
#   cross_site text/plain    POST, Content-Type: text/plain, Origin: evil.example 415 or 403
#   cross_site origin        POST, application/json, Origin: https://evil.example 403
#   bogus_model auth_text    model "Not logged in" + [[scenario:model_not_found]] 400
#   bogus_model nul          model with a NUL                                    400
#   bogus_model 100k         model of 100,000 characters                         400
#   bogus_model spaces       model "sonnet status=200 kind=ok"                   400
#   slowloris headers        headers trickled, one line a second                 closed or 408 in 60 s
#   slowloris body           Content-Length 100000, body trickled a byte a second closed or 408 in 60 s
#   array_heavy              ~1 MiB of [0,0,…] in tool schemas / a tool_use input 200
#   stalled_reader           a ~10 MB stream ([[scenario:flood]]) never read       cut after http.write_timeout
#
# SOAK_STALLED_READERS (default 2) connections at a time request a large stream and stop
# reading; ccgate runs with http.write_timeout=5 and must close each after it (the run is
# cancelled, its memory freed: the RSS trend covers it). The array_heavy requests are served
# with their arrays kept as text, never trees (conversation::RawJson), so RSS stays flat.
#
# (The defences are 415 / 403 for cross-site POSTs, 400 for bad model names and header /
# body read timeouts; override the expectations here while trying other builds.)
SOAK_EXPECT_CROSS_SITE=${SOAK_EXPECT_CROSS_SITE:-403,415}
SOAK_EXPECT_BOGUS_MODEL=${SOAK_EXPECT_BOGUS_MODEL:-400}
SOAK_SLOWLORIS_CLOSE_SECS=${SOAK_SLOWLORIS_CLOSE_SECS:-60}
SOAK_HOSTILE_CLIENTS=${SOAK_HOSTILE_CLIENTS:-2}
SOAK_SLOWLORIS_CONNS=${SOAK_SLOWLORIS_CONNS:-4}
set -eu

cd "$(dirname "$0")/.."
ROOT=$PWD
: "${CARGO_TARGET_DIR:=$ROOT/target}"
export CARGO_TARGET_DIR
MINUTES=${SOAK_MINUTES:-2}
CLIENTS=${SOAK_CLIENTS:-8}
case $MINUTES in '' | *[!0-9]*) echo "SOAK_MINUTES must be a whole number" >&2; exit 2 ;; esac
case $CLIENTS in '' | *[!0-9]*) echo "SOAK_CLIENTS must be a whole number" >&2; exit 2 ;; esac
SECS=${SOAK_SECS:-$((MINUTES * 60))}
case $SECS in '' | *[!0-9]*) echo "SOAK_SECS must be a whole number" >&2; exit 2 ;; esac

echo "== building (release)"
cargo build --release --quiet --bin ccgate --example soak
BIN=$CARGO_TARGET_DIR/release/ccgate
GEN=$CARGO_TARGET_DIR/release/examples/soak

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ccgate-soak.XXXXXX")
# The rules file gets a directory of its own: ccgate's watcher reloads on ANY change in the
# rules file's directory, so a log file next to it makes every log line (including the
# reload's own) trigger another reload (see bench/README.md, "reload storm").
mkdir "$TMP/rules" "$TMP/log"
RULES=$TMP/rules/rules.yaml
cp "$ROOT/rules/rules.yaml" "$RULES"
LOG=$TMP/log/ccgate.log
PID=

# shellcheck disable=SC2317 # (called from the EXIT trap)
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        sleep 1
        kill -KILL "$PID" 2>/dev/null || true
    fi
    if [ "${SOAK_KEEP:-0}" = 1 ]; then
        echo "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== starting ccgate"
# Started from the temp dir so no config/ccgate.yaml of the checkout applies.
cd "$TMP"
CCGATE_CLI__COMMAND=$ROOT/tests/fake-claude \
    CCGATE_LISTEN=127.0.0.1:0 \
    CCGATE_RULES=$RULES \
    CCGATE_CLI__MAX_CONCURRENT=8 \
    CCGATE_CLI__CONVERSATION_IDLE_TIMEOUT=2 \
    CCGATE_HTTP__WRITE_TIMEOUT=5 \
    CCGATE_LOG_LEVEL=info \
    "$BIN" serve 2>"$LOG" &
PID=$!
cd "$ROOT"

ADDR=
i=0
while [ $i -lt 100 ]; do
    ADDR=$(sed -n 's/.*ccgate listening.*listen=\(127\.0\.0\.1:[0-9][0-9]*\).*/\1/p' "$LOG" | head -n 1)
    if [ -n "$ADDR" ]; then break; fi
    if ! kill -0 "$PID" 2>/dev/null; then
        echo "ccgate exited at start:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    sleep 0.1
    i=$((i + 1))
done
if [ -z "$ADDR" ]; then
    echo "ccgate did not log its listen address within 10 s:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
fi
echo "ccgate pid $PID listening on $ADDR; log $LOG"

STATUS=0
"$GEN" --url "http://$ADDR" --pid "$PID" --rules "$RULES" \
    --clients "$CLIENTS" --secs "$SECS" \
    --hostile-clients "$SOAK_HOSTILE_CLIENTS" --slowloris-conns "$SOAK_SLOWLORIS_CONNS" \
    --expect-cross-site "$SOAK_EXPECT_CROSS_SITE" --expect-bogus-model "$SOAK_EXPECT_BOGUS_MODEL" \
    --slowloris-close-secs "$SOAK_SLOWLORIS_CLOSE_SECS" \
    --stalled-readers "${SOAK_STALLED_READERS:-2}" --stalled-wait-secs 10 \
    --rss-warmup-secs "${SOAK_RSS_WARMUP_SECS:-60}" || STATUS=$?

echo
echo "== ccgate log: $(wc -l <"$LOG") lines;" \
    "WARN $(grep -c ' WARN ' "$LOG" || true), ERROR $(grep -c ' ERROR ' "$LOG" || true)"
if grep -q 'panicked' "$LOG"; then
    echo "FAILED: ccgate logged a panic:"
    grep -m 5 'panicked' "$LOG"
    STATUS=1
fi

echo "== stopping ccgate (SIGTERM)"
kill -TERM "$PID"
# Bounded wait: a watchdog SIGKILLs ccgate if it has not exited after 15 s.
# (Short sleeps, so killing the watchdog leaves no long-lived `sleep` behind.)
(
    n=0
    while [ $n -lt 150 ]; do
        sleep 0.1
        n=$((n + 1))
    done
    kill -KILL "$PID" 2>/dev/null && echo "FAILED: ccgate still running 15 s after SIGTERM"
) &
WATCHDOG=$!
RC=0
wait "$PID" || RC=$?
kill "$WATCHDOG" 2>/dev/null || true
wait "$WATCHDOG" 2>/dev/null || true
echo "ccgate exited with status $RC"
if [ "$RC" -ne 0 ]; then STATUS=1; fi
PID=

if [ "$STATUS" -ne 0 ]; then
    echo "== last ccgate log lines"
    tail -n 20 "$LOG"
    echo "SOAK: FAILED"
else
    echo "SOAK: PASSED"
fi
exit "$STATUS"
