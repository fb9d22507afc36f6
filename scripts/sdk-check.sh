#!/usr/bin/env bash
# Runs the official openai and anthropic Python SDKs against a real ccgate process that
# drives the fake CLI (tests/fake-claude). Installs the SDKs into a cached venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CCGATE_SDK_VENV:-${HOME}/.cache/ccgate/sdk-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -c 'import openai, anthropic' 2>/dev/null \
  || "$venv/bin/pip" install --quiet --disable-pip-version-check 'openai>=1.50,<3' 'anthropic>=0.50,<1'
cargo build --quiet --locked --bin ccgate
bin="${CARGO_TARGET_DIR:-target}/debug/ccgate"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
scenario=$(mktemp)
FAKE_CLAUDE_SCENARIO_FILE="$scenario" \
CCGATE_LISTEN="127.0.0.1:$port" \
CCGATE_WATCH_RULES=false \
CCGATE_SSE_KEEPALIVE=0.1 \
CCGATE_CLI__COMMAND="$PWD/tests/fake-claude" \
CCGATE_RULES=/nonexistent/use-embedded.yaml \
  "$bin" serve 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log" "$scenario"' EXIT
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)" 2>/dev/null; then break; fi
  sleep 0.1
done
if ! "$venv/bin/python" tests/sdk/check_sdks.py "http://127.0.0.1:$port" "$scenario"; then
  echo "--- ccgate log ---"; tail -50 "$log"; exit 1
fi

# ---- structured output: the SDKs' parse helpers (tests/sdk/check_structured.py) through
# a second ccgate running the REAL CLI ($CCGATE_REAL_CLAUDE) against a loopback mock of
# the Messages API (tests/sdk/mock_structured.py); without it, the fake CLI mimics the
# StructuredOutput call (FAKE_CLAUDE_JSON).
structured_check() {
  local sport sdir mock_pid spid cli
  sdir=$(mktemp -d)
  python3 tests/sdk/mock_structured.py "$sdir/mock-port" &
  mock_pid=$!
  for _ in $(seq 1 100); do [ -s "$sdir/mock-port" ] && break; sleep 0.05; done
  sport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cli="${CCGATE_REAL_CLAUDE:-$PWD/tests/fake-claude}"
  mkdir -p "$sdir/home/.claude"
  HOME="$sdir/home" CLAUDE_CONFIG_DIR="$sdir/home/.claude" \
  ANTHROPIC_BASE_URL="http://127.0.0.1:$(cat "$sdir/mock-port")" ANTHROPIC_API_KEY=sdk-check \
  CLAUDE_CODE_MAX_RETRIES=0 FAKE_CLAUDE_JSON='{"name":"Ada","age":36}' \
  CCGATE_LISTEN="127.0.0.1:$sport" CCGATE_WATCH_RULES=false CCGATE_CLI__COMMAND="$cli" \
  CCGATE_RULES=/nonexistent/use-embedded.yaml \
    "$bin" serve 2>"$sdir/log" &
  spid=$!
  for _ in $(seq 1 100); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$sport/health', timeout=1)" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "structured output checks via $cli"
  local rc=0
  "$venv/bin/python" tests/sdk/check_structured.py "http://127.0.0.1:$sport" || rc=$?
  if [ "$rc" != 0 ]; then echo "--- ccgate log ---"; tail -50 "$sdir/log"; fi
  kill "$spid" "$mock_pid" 2>/dev/null || true
  wait "$spid" "$mock_pid" 2>/dev/null || true
  rm -rf "$sdir"
  return "$rc"
}
structured_check
