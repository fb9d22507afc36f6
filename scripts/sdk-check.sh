#!/usr/bin/env bash
# Runs the official openai and anthropic Python SDKs against a real ccgate process that
# drives the fake CLI (tests/fake-claude). Installs the SDKs into a cached venv.
#
# Then the client-tool loops (tests/sdk/check_tools.py; CCGATE_SDK_TOOLS=0 skips them): a second
# ccgate whose backend is the REAL CLI ($CCGATE_REAL_CLAUDE) against the loopback Messages
# API mock tests/sdk/mock_messages.py, so the checks can assert what the model received.
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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_health() {
  for _ in $(seq 1 200); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$1/health', timeout=1)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}
port=$(free_port)
log=$(mktemp)
scenario=$(mktemp)
pids=()
tmpdirs=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -f "$log" "$scenario"
  for d in "${tmpdirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT
env -u CCGATE_SDK_TOOLS -u CCGATE_REAL_CLAUDE \
FAKE_CLAUDE_SCENARIO_FILE="$scenario" \
CCGATE_LISTEN="127.0.0.1:$port" \
CCGATE_WATCH_RULES=false \
CCGATE_SSE_KEEPALIVE=0.1 \
CCGATE_CLI__COMMAND="$PWD/tests/fake-claude" \
CCGATE_RULES=/nonexistent/use-embedded.yaml \
  "$bin" serve 2>"$log" &
pids+=($!)
wait_health "$port" || true
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

if [ "${CCGATE_SDK_TOOLS:-1}" = 0 ] || { [ -z "${CCGATE_REAL_CLAUDE:-}" ] && [ -z "${CI:-}" ]; }; then
  echo "SKIP client-tool checks (CCGATE_SDK_TOOLS=0, or no CCGATE_REAL_CLAUDE outside CI)"
  exit 0
fi
real="${CCGATE_REAL_CLAUDE:?the client-tool checks need CCGATE_REAL_CLAUDE (the pinned real CLI)}"
tools_tmp=$(mktemp -d)
tmpdirs+=("$tools_tmp")
mkdir -p "$tools_tmp/home" "$tools_tmp/config" "$tools_tmp/requests"
mock_port=$(free_port)
python3 tests/sdk/mock_messages.py "$mock_port" "$tools_tmp/requests" &
pids+=($!)
tools_port=$(free_port)
tools_log="$tools_tmp/ccgate.log"
env -u CCGATE_SDK_TOOLS -u CCGATE_REAL_CLAUDE \
CCGATE_LISTEN="127.0.0.1:$tools_port" \
CCGATE_WATCH_RULES=false \
CCGATE_RULES=/nonexistent/use-embedded.yaml \
CCGATE_CLI__COMMAND="$real" \
CCGATE_CLI__ENV__HOME="$tools_tmp/home" \
CCGATE_CLI__ENV__CLAUDE_CONFIG_DIR="$tools_tmp/config" \
CCGATE_CLI__ENV__ANTHROPIC_BASE_URL="http://127.0.0.1:$mock_port" \
CCGATE_CLI__ENV__ANTHROPIC_API_KEY=test-key \
CCGATE_CLI__ENV__CLAUDE_CODE_MAX_RETRIES=0 \
  "$bin" serve 2>"$tools_log" &
pids+=($!)
if ! wait_health "$tools_port"; then
  echo "ccgate with the real CLI did not become healthy"; tail -50 "$tools_log"; exit 1
fi
if ! "$venv/bin/python" tests/sdk/check_tools.py "http://127.0.0.1:$tools_port" "$tools_tmp/requests"; then
  echo "--- ccgate (real CLI) log ---"; tail -50 "$tools_log"; exit 1
fi

# ---- the Anthropic SDK's Threads beta and tool runner on their defaults (tests/sdk/check_threads.py),
# through the real-CLI ccgate above. The SDK with threads (anthropic >= 2.17) lives in its own venv.
threads_venv="${CCGATE_SDK_THREADS_VENV:-${HOME}/.cache/ccgate/sdk-threads-venv}"
if [ ! -x "$threads_venv/bin/python" ]; then
  python3 -m venv "$threads_venv"
fi
"$threads_venv/bin/python" -c 'import anthropic, sys; sys.exit(0 if int(anthropic.__version__.split(".")[0]) >= 2 else 1)' 2>/dev/null \
  || "$threads_venv/bin/pip" install --quiet --disable-pip-version-check 'anthropic>=2.17,<3'
if ! "$threads_venv/bin/python" tests/sdk/check_threads.py "http://127.0.0.1:$tools_port" "$tools_tmp/requests"; then
  echo "--- ccgate (real CLI) log ---"; tail -50 "$tools_log"; exit 1
fi
