#!/usr/bin/env bash
# Runs the pinned Codex CLI (npm @openai/codex, Responses API only) through ccgate -> the REAL
# Claude CLI ($CCGATE_REAL_CLAUDE) -> the loopback Messages API mock tests/sdk/mock_messages.py.
# Codex's configuration is its default except the provider (its `web_search` tool is the
# CLI's WebSearch; docs/clients.md). Checks:
#   - a plain answer (its namespace tools, reasoning summary and encrypted-content include
#     are accepted);
#   - a tool loop: the model (the mock) calls one of Codex's function tools, Codex runs it and
#     sends the function_call_output, which continues the held CLI run; the final answer
#     reports the tool's output;
#   - `codex exec resume --last`: the resumed session's whole history reaches the model;
#   - `--output-schema`: the answer is the JSON the schema asks for (text.format json_schema
#     -> the CLI's --json-schema);
#   - apply_patch as Codex's freeform custom tool: Codex offers it only for a model with a
#     catalog entry saying so, so this one run adds `-c model_catalog_json=<file>`, whose one
#     entry (tests/sdk/codex_catalog.py) keeps Codex's own instructions and sets
#     `apply_patch_tool_type: "freeform"`; the model's patch is applied by Codex (the file
#     appears) and the custom_tool_call_output continues the run.
set -euo pipefail
cd "$(dirname "$0")/.."
CODEX_VERSION="${CCGATE_CODEX_VERSION:-0.171.0}"
real="${CCGATE_REAL_CLAUDE:?codex-check needs CCGATE_REAL_CLAUDE (the pinned real CLI)}"
prefix="${CCGATE_CODEX_PREFIX:-${HOME}/.cache/ccgate/codex-$CODEX_VERSION}"
codex="$prefix/node_modules/.bin/codex"
if [ ! -x "$codex" ]; then
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-audit --no-fund --silent "@openai/codex@$CODEX_VERSION"
fi
"$codex" --version
cargo build --quiet --locked --bin ccgate
bin="${CARGO_TARGET_DIR:-target}/debug/ccgate"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/home/.claude" "$tmp/requests" "$tmp/codex" "$tmp/work"
mock_port=$(free_port)
python3 tests/sdk/mock_messages.py "$mock_port" "$tmp/requests" &
pids+=($!)
port=$(free_port)
env -u CCGATE_REAL_CLAUDE \
CCGATE_LISTEN="127.0.0.1:$port" CCGATE_WATCH_RULES=false \
CCGATE_RULES=/nonexistent/use-embedded.yaml \
CCGATE_CLI__COMMAND="$real" \
CCGATE_CLI__ENV__HOME="$tmp/home" CCGATE_CLI__ENV__CLAUDE_CONFIG_DIR="$tmp/home/.claude" \
CCGATE_CLI__ENV__ANTHROPIC_BASE_URL="http://127.0.0.1:$mock_port" \
CCGATE_CLI__ENV__ANTHROPIC_API_KEY=test-key CCGATE_CLI__ENV__CLAUDE_CODE_MAX_RETRIES=0 \
  "$bin" serve 2>"$tmp/ccgate.log" &
pids+=($!)
for _ in $(seq 1 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)" 2>/dev/null && break
  sleep 0.1
done
cat >"$tmp/codex/config.toml" <<TOML
model = "sonnet"
model_provider = "ccgate"

[model_providers.ccgate]
name = "ccgate"
base_url = "http://127.0.0.1:$port/v1"
wire_api = "responses"
env_key = "CCGATE_CODEX_KEY"
TOML
run_codex() {
  (cd "$tmp/work" && CODEX_HOME="$tmp/codex" CCGATE_CODEX_KEY=unused \
    timeout 180 "$codex" "$@" 2>&1)
}
last_request() { ls -t "$tmp"/requests/req-*.json | head -1; }
fail=0
out=$(run_codex exec --skip-git-repo-check "say hi") || true
if grep -q "Hello from the mock API." <<<"$out"; then echo "PASS codex: a plain answer"
else echo "FAIL codex: a plain answer"; echo "$out" | tail -20; fail=1; fi
out=$(run_codex exec --skip-git-repo-check "[[tools:single]] use a tool") || true
if grep -q "^seen: " <<<"$out"; then echo "PASS codex: a tool loop (function_call -> Codex runs it -> function_call_output)"
else echo "FAIL codex: a tool loop"; echo "$out" | tail -20; fail=1; fi
out=$(run_codex exec resume --last --skip-git-repo-check "the follow-up question") || true
# The resumed session is the tool loop's: its marker makes the model call a tool again.
if grep -q "^seen: " <<<"$out" && grep -q "use a tool" "$(last_request)" \
  && grep -q "the follow-up question" "$(last_request)"; then
  echo "PASS codex: exec resume (the earlier turns reach the model)"
else echo "FAIL codex: exec resume"; echo "$out" | tail -20; fail=1; fi
cat >"$tmp/schema.json" <<'JSON'
{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}
JSON
out=$(run_codex exec --skip-git-repo-check --output-schema "$tmp/schema.json" "name a city") || true
if grep -Eq '\{"city": ?"Paris"\}' <<<"$out"; then echo "PASS codex: --output-schema"
else echo "FAIL codex: --output-schema"; echo "$out" | tail -20; fail=1; fi
(cd "$tmp/work" && CODEX_HOME="$tmp/codex" CCGATE_CODEX_KEY=unused \
  python3 "$OLDPWD/tests/sdk/codex_catalog.py" sonnet "$tmp/catalog.json" "$codex")
out=$(run_codex exec --skip-git-repo-check -c "model_catalog_json=\"$tmp/catalog.json\"" \
  --sandbox workspace-write "[[patch]] add the file") || true
if [ "$(cat "$tmp/work/hello.txt" 2>/dev/null)" = "hello from ccgate" ] && grep -q "^seen: " <<<"$out"; then
  echo "PASS codex: apply_patch as a custom tool (Codex applied the model's patch)"
else echo "FAIL codex: apply_patch"; echo "$out" | tail -20; ls -la "$tmp/work"; fail=1; fi
held=$(grep -c 'endpoint="responses".*status=200' "$tmp/ccgate.log" || true)
if [ "$fail" != 0 ]; then echo "--- ccgate log ---"; tail -30 "$tmp/ccgate.log"; exit 1; fi
echo "codex-check: ok ($held Responses requests answered)"
