#!/usr/bin/env bash
# Drives the operator page (GET /admin/) in Debian's headless Chromium: a ccgate on the fake
# CLI with a keys file (an admin key and a client key) and a usage ledger, a few API
# requests with the client key, then tests/browser/check_admin_page.py
# (selenium through /usr/bin/chromedriver; nothing downloads a browser or a driver).
# Screenshots go to ${CARGO_TARGET_DIR:-target}/browser/.
#
# Needs: chromium and chromium-driver (Debian packages; .ci/run installs them), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
for exe in /usr/bin/chromium /usr/bin/chromedriver; do
  [ -x "$exe" ] || { echo "error: $exe missing: apt-get install chromium chromium-driver" >&2; exit 1; }
done
venv="${CCGATE_BROWSER_VENV:-${HOME}/.cache/ccgate/browser-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import selenium' 2>/dev/null \
  || "$venv/bin/pip" install --quiet --disable-pip-version-check 'selenium>=4.20,<5'
cargo build --quiet --locked --bin ccgate
target="${CARGO_TARGET_DIR:-target}"
bin="$target/debug/ccgate"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
admin_key="admin-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
client_key="client-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
cat >"$work/keys.yaml" <<KEYS
keys:
  - name: ops
    sha256: "$(sha "$admin_key")"
    role: admin
  - name: app
    sha256: "$(sha "$client_key")"
    limits:
      requests_per_minute: 100
      window_share: 0.5
KEYS
FAKE_CLAUDE_SCENARIO_FILE="$work/scenario" \
FAKE_CLAUDE_WINDOWS="0.42,0.1" \
CCGATE_LISTEN="127.0.0.1:$port" \
CCGATE_WATCH_RULES=false \
CCGATE_KEYS="$work/keys.yaml" \
CCGATE_STATE__PATH="$work/state/ccgate.db" \
CCGATE_CLI__COMMAND="$PWD/tests/fake-claude" \
CCGATE_RULES=/nonexistent/use-embedded.yaml \
  "$bin" serve 2>"$work/log" &
pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('$base/health', timeout=1)" 2>/dev/null && break
  sleep 0.1
done
# A few requests with the client key for the usage chart to count: three answered, then
# one the (fake) CLI fails with 529 overloaded (503 on the OpenAI endpoint) for the
# failures section.
call() {
  python3 - "$base" "$client_key" "$1" <<'PY'
import json, sys, urllib.error, urllib.request
base, key, want = sys.argv[1:4]
req = urllib.request.Request(base + "/v1/chat/completions", method="POST",
    data=json.dumps({"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hello"}]}).encode(),
    headers={"content-type": "application/json", "authorization": "Bearer " + key})
try:
    status = urllib.request.urlopen(req, timeout=30).status
except urllib.error.HTTPError as e:
    status = e.code
assert status == int(want), f"status {status}, wanted {want}"
PY
}
: >"$work/scenario"
for _ in 1 2 3; do call 200; done
echo overloaded >"$work/scenario"
call 503
: >"$work/scenario"
made=4
rc=0
SE_OFFLINE=true "$venv/bin/python" tests/browser/check_admin_page.py \
  "$base" "$admin_key" "$client_key" "$made" "$target/browser" || rc=$?
if [ "$rc" != 0 ]; then echo "--- ccgate log ---"; tail -40 "$work/log"; fi
exit "$rc"
