#!/usr/bin/env bash
# Checks that imports between ccgate's modules go one way only (ARCHITECTURE.md, the
# layer table below) and that no two modules depend on each other.
#
#   bash scripts/check-layers.sh              check the repository's src/
#   bash scripts/check-layers.sh --root DIR   check DIR/src/
#   bash scripts/check-layers.sh --self-test  plant bad imports in temp trees, expect failures
#
# Each file under src/ belongs to a module: its top-level directory or its file name
# (src/backend/pool.rs is `backend`, src/health.rs is `health`). Every `crate::…` path in
# code (comments and string literals are skipped, `use` groups are followed across lines)
# is an edge to the module it names; `crate::Name` re-exported by lib.rs counts as the
# module it comes from. Rules, each reported as FILE:LINE: RULE: …, exit 1 on any:
#   layer      a module imports a module of a higher level (or one the table lacks)
#   framework  a level-0/1 module uses axum or tower*
#   state-bag  a level-0/1 module names AppState (services get their Arcs passed in)
#   cycle      modules that import each other, at any length: between top-level modules,
#              and between the files of one directory module (`super::`, `crate::m::sub`;
#              a mod.rs declaring and re-exporting its children is not an edge)
# Approximations: `super::` inside an inline `mod … {` (unit tests at the end of a file)
# means the file itself and is skipped; a string literal spanning lines is scanned as code.
set -euo pipefail

# level  modules (keep in step with ARCHITECTURE.md)
LEVELS='
0 rules protocol conversation turn shutdown clock capture offload keys
1 config backend health probe reload metrics engine response_store accounts limits store
2 http
3 app
4 cmd main
'

usage() { sed -n '2,8p' "$0"; }

check() {
  local root=$1
  if [[ ! -d $root/src ]]; then
    echo "check-layers: no src/ under $root" >&2
    return 2
  fi
  local files=()
  local f
  while IFS= read -r f; do files+=("$f"); done < <(cd "$root" && find src -name '*.rs' | LC_ALL=C sort)
  # lib.rs first: its `pub use` lines map re-exported names to their modules.
  local ordered=()
  [[ -f $root/src/lib.rs ]] && ordered+=(src/lib.rs)
  for f in "${files[@]}"; do
    [[ $f == src/lib.rs ]] || ordered+=("$f")
  done
  (cd "$root" && awk -v levels="$LEVELS" -f /dev/fd/3 "${ordered[@]}") 3<<'AWK'
function first_ident(s) {
  if (match(s, /^[ \t]*[A-Za-z_][A-Za-z0-9_]*/)) {
    s = substr(s, RSTART, RLENGTH)
    gsub(/[ \t]/, "", s)
    return s
  }
  if (match(s, /^[ \t]*\*/)) return "*"
  return ""
}
# Splits "{a, b::{c, d}, e}..." into its top-level items; returns their number.
function items(s, out,    i, c, depth, cur, n) {
  split("", out)
  n = 0; depth = 0; cur = ""
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (c == "{") { depth++; if (depth == 1) continue }
    if (c == "}") { depth--; if (depth == 0) { out[++n] = cur; return n } }
    if (c == "," && depth == 1) { out[++n] = cur; cur = ""; continue }
    cur = cur c
  }
  if (cur != "") out[++n] = cur
  return n
}
function level_name(l) {
  return (l == 0) ? "leaf" : (l == 1) ? "service" : (l == 2) ? "http" : (l == 3) ? "app wiring" : "cmd"
}
function add_edge(from, to, ln) {
  nedges++
  e_from[nedges] = from; e_to[nedges] = to; e_file[nedges] = FILENAME; e_line[nedges] = ln
}
function add_sub_edge(from, to, ln,    k) {
  if (from == to) return
  # A directory module's mod.rs declares and re-exports its children: not a dependency.
  if (from == mod && index(to, mod "::") == 1) return
  k = from SUBSEP to
  if (!(k in s_edge)) { s_edge[k] = FILENAME ":" ln; s_out[from] = s_out[from] " " to }
}
# A `crate::` path: `path` is what follows `crate::`.
function crate_path(path, ln,    t, rem, n, it, i, s) {
  t = first_ident(path)
  if (t == "" || t == "self" || t == "*") return
  if (t in reexport) t = reexport[t]
  add_edge(mod, t, ln)
  if (t != mod || !is_dir[mod]) return
  rem = substr(path, index(path, t) + length(t))
  if (substr(rem, 1, 2) != "::") { add_sub_edge(node, mod, ln); return }
  rem = substr(rem, 3)
  if (substr(rem, 1, 1) == "{") {
    n = items(rem, it)
    for (i = 1; i <= n; i++) {
      s = first_ident(it[i])
      add_sub_edge(node, ((mod SUBSEP s) in is_sub) ? mod "::" s : mod, ln)
    }
  } else {
    s = first_ident(rem)
    add_sub_edge(node, ((mod SUBSEP s) in is_sub) ? mod "::" s : mod, ln)
  }
}
# A `super::` path in a file below a directory module (a sibling or the mod.rs items).
function super_path(path, ln,    s) {
  s = first_ident(path)
  if (s == "super") { crate_path(substr(path, index(path, "super") + 7), ln); return }
  if (s == "" || s == "*" && node == mod) return
  add_sub_edge(node, ((mod SUBSEP s) in is_sub) ? mod "::" s : mod, ln)
}
# Calls f(path) for each top-level item after `prefix::` (a group gives several).
function each_path(after, ln, kind,    n, it, i) {
  if (substr(after, 1, 1) == "{") {
    n = items(after, it)
    for (i = 1; i <= n; i++) one_path(it[i], ln, kind)
  } else {
    one_path(after, ln, kind)
  }
}
function one_path(p, ln, kind) {
  sub(/^[ \t]+/, "", p)
  if (kind == "crate") crate_path(p, ln)
  else super_path(p, ln)
}
function scan(text, ln, word, kind,    rest, p, pre) {
  rest = text
  while ((p = index(rest, word "::")) > 0) {
    pre = (p > 1) ? substr(rest, p - 1, 1) : ""
    rest = substr(rest, p + length(word) + 2)
    if (pre ~ /[A-Za-z0-9_$]/) continue
    each_path(rest, ln, kind)
  }
}
function violation(file, ln, rule, msg) {
  printf "%s:%s: %s: %s\n", file, ln, rule, msg
  failures++
}
function process(text, ln) {
  if (FILENAME == "src/lib.rs") {
    # `pub use app::serve;` / `pub use state::AppState;`
    if (match(text, /pub[ \t]+use[ \t]+[A-Za-z_][A-Za-z0-9_]*::([A-Za-z_][A-Za-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*[ \t]*;/)) {
      s = substr(text, RSTART, RLENGTH)
      sub(/pub[ \t]+use[ \t]+/, "", s); sub(/[ \t]*;$/, "", s)
      n = split(s, parts, "::")
      reexport[parts[n]] = parts[1]
    }
    return
  }
  if (mod == "main") return
  if (mod in level && level[mod] <= 1) {
    if (text ~ /(^|[^A-Za-z0-9_])(axum|tower[A-Za-z0-9_]*)::/ || text ~ /(^|[^A-Za-z0-9_])use[ \t]+(::)?(axum|tower[A-Za-z0-9_]*)[ \t;]/)
      violation(FILENAME, ln, "framework", mod " (level " level[mod] ", " level_name(level[mod]) ") uses axum/tower; only http (level 2) and above may")
    if (text ~ /(^|[^A-Za-z0-9_])AppState([^A-Za-z0-9_]|$)/)
      violation(FILENAME, ln, "state-bag", mod " (level " level[mod] ", " level_name(level[mod]) ") names AppState; services get the Arcs they need passed in")
  }
  scan(text, ln, "crate", "crate")
  if (is_dir[mod] && node != mod && !inmod) scan(text, ln, "super", "super")
}
# Depth-first search for cycles; `g` selects the graph ("m" modules, "s" sub-modules).
function dfs(g, v,    list, n, i, w, j, cyc, key, members, k) {
  color[g, v] = 1
  stack[++sp] = v
  list = (g == "m") ? m_out[v] : s_out[v]
  n = split(list, outs, " ")
  for (i = 1; i <= n; i++) nbr[v, i] = outs[i]
  nn[v] = n
  for (i = 1; i <= nn[v]; i++) {
    w = nbr[v, i]
    if (color[g, w] == 1) {
      # Back edge v -> w: the cycle is the stack from w to v.
      for (j = sp; j > 0 && stack[j] != w; j--) ;
      cyc = ""; members = ""
      for (k = j; k <= sp; k++) { cyc = cyc stack[k] " -> "; members = members stack[k] "," }
      cyc = cyc w
      key = g ":" canonical(members)
      if (!(key in seen_cycle)) {
        seen_cycle[key] = 1
        for (k = j; k <= sp; k++) {
          nxt = (k < sp) ? stack[k + 1] : w
          loc = (g == "m") ? m_edge[stack[k] SUBSEP nxt] : s_edge[stack[k] SUBSEP nxt]
          split(loc, lp, ":")
          violation(lp[1], lp[2], "cycle", cyc " (this line: " stack[k] " -> " nxt ")")
        }
      }
    } else if (color[g, w] == 0) {
      dfs(g, w)
    }
  }
  color[g, v] = 2
  sp--
}
function canonical(members,    n, a, i, j, t, s) {
  n = split(members, a, ",")
  for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
  s = ""
  for (i = 1; i <= n; i++) if (a[i] != "") s = s a[i] ","
  return s
}
BEGIN {
  nl = split(levels, lines, "\n")
  for (i = 1; i <= nl; i++) {
    nw = split(lines[i], w, " ")
    for (j = 2; j <= nw; j++) level[w[j]] = w[1] + 0
  }
  for (i = 1; i < ARGC; i++) {
    np = split(ARGV[i], parts, "/")
    if (np >= 3) {
      is_dir[parts[2]] = 1
      s = parts[3]; sub(/\.rs$/, "", s)
      if (s != "mod") is_sub[parts[2], s] = 1
    }
  }
  failures = 0; nedges = 0; sp = 0
}
FNR == 1 {
  np = split(FILENAME, parts, "/")
  mod = parts[2]; sub(/\.rs$/, "", mod)
  node = mod
  if (np >= 3) { s = parts[3]; sub(/\.rs$/, "", s); if (s != "mod") node = mod "::" s }
  inmod = 0; inblock = 0; pending = ""
  if (mod != "lib" && !(mod in level))
    violation(FILENAME, 1, "layer", "module " mod " is not in the layer table (scripts/check-layers.sh)")
}
{
  line = $0
  if (inblock) { if (index(line, "*/")) { sub(/^.*\*\//, "", line); inblock = 0 } else next }
  gsub(/'([^'\\]|\\.)'/, "' '", line)
  gsub(/"([^"\\]|\\.)*"/, "\"\"", line)
  gsub(/\/\*.*\*\//, "", line)
  sub(/\/\/.*$/, "", line)
  if (index(line, "/*")) { sub(/\/\*.*$/, "", line); inblock = 1 }
  if (line ~ /^[ \t]*(pub(\([a-z]+\))?[ \t]+)?mod[ \t]+[A-Za-z_0-9]+[ \t]*\{/) inmod = 1
  if (pending != "") {
    pending = pending " " line
    if (index(line, ";")) { process(pending, pending_ln); pending = "" }
    next
  }
  if (line ~ /(^|[^A-Za-z0-9_])use[ \t]/ && !index(line, ";")) { pending = line; pending_ln = FNR; next }
  process(line, FNR)
}
END {
  for (i = 1; i <= nedges; i++) {
    from = e_from[i]; to = e_to[i]
    if (from == to) continue
    k = from SUBSEP to
    if (!(k in m_edge)) { m_edge[k] = e_file[i] ":" e_line[i]; m_out[from] = m_out[from] " " to }
    if (!(from in level)) continue
    if (!(to in level)) {
      violation(e_file[i], e_line[i], "layer", from " (level " level[from] ") imports " to ", which is not in the layer table")
    } else if (level[to] > level[from]) {
      violation(e_file[i], e_line[i], "layer", from " (level " level[from] ", " level_name(level[from]) ") imports " to " (level " level[to] ", " level_name(level[to]) "); level " level[from] " may import levels 0-" level[from] " only")
    }
  }
  for (k in m_edge) { split(k, p, SUBSEP); if (!color["m", p[1]]) dfs("m", p[1]) }
  for (k in s_edge) { split(k, p, SUBSEP); if (!color["s", p[1]]) dfs("s", p[1]) }
  if (failures > 0) exit 1
}
AWK
}

self_test() {
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064  # expand $tmp now
  trap "rm -rf '$tmp'" EXIT
  local failed=0 out rc
  # A small tree that obeys the table.
  make_tree() {
    rm -rf "$tmp/t"
    mkdir -p "$tmp/t/src/rules" "$tmp/t/src/backend" "$tmp/t/src/http" "$tmp/t/src/cmd"
    printf 'pub mod app;\npub mod backend;\npub use app::serve;\npub use http::state::AppState;\n' >"$tmp/t/src/lib.rs"
    printf 'mod load;\npub use load::Rules;\n' >"$tmp/t/src/rules/mod.rs"
    printf 'use super::Rules as _R;\npub struct Rules;\n' >"$tmp/t/src/rules/load.rs"
    printf 'pub fn unix_now() -> u64 { 0 }\n' >"$tmp/t/src/clock.rs"
    # shellcheck disable=SC2016  # backticks are Rust doc text
    printf '//! Uses `crate::http` in a doc comment only.\nuse crate::clock::unix_now;\nconst S: &str = "crate::http::x and axum::Router";\n' >"$tmp/t/src/health.rs"
    printf 'use crate::{\n    clock,\n    health::Health,\n};\nuse std::sync::Arc;\n' >"$tmp/t/src/metrics.rs"
    printf 'mod pool;\nmod process;\npub use pool::Pool;\npub use process::Run;\npub struct CliSettings;\n' >"$tmp/t/src/backend/mod.rs"
    printf 'use super::CliSettings;\nuse super::process::Run;\npub struct Pool;\n' >"$tmp/t/src/backend/pool.rs"
    printf 'use super::CliSettings;\npub struct Run;\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::pool::Pool;\n}\n' >"$tmp/t/src/backend/process.rs"
    printf 'pub mod state;\nuse axum::Router;\nuse crate::backend::CliSettings;\n' >"$tmp/t/src/http/mod.rs"
    printf 'pub struct AppState { pub h: std::sync::Arc<crate::health::Health> }\n' >"$tmp/t/src/http/state.rs"
    printf 'use crate::http::state::AppState;\npub async fn serve() {}\n' >"$tmp/t/src/app.rs"
    printf 'use crate::app::serve;\nuse crate::AppState;\n' >"$tmp/t/src/cmd/mod.rs"
    printf 'fn main() { ccgate::cmd::run(); }\n' >"$tmp/t/src/main.rs"
  }
  # expect_fail NAME EXPECTED-LINE-REGEX: the check fails and names the planted line.
  expect_fail() {
    rc=0
    out=$(check "$tmp/t" 2>&1) || rc=$?
    if [[ $rc -ne 1 ]] || ! grep -Eq -- "$2" <<<"$out"; then
      printf 'self-test FAILED: %s: want exit 1 and /%s/, got exit %s:\n%s\n' "$1" "$2" "$rc" "$out"
      failed=1
    else
      printf 'ok: %s\n' "$1"
    fi
  }
  expect_ok() {
    rc=0
    out=$(check "$tmp/t" 2>&1) || rc=$?
    if [[ $rc -ne 0 ]]; then
      printf 'self-test FAILED: %s: want exit 0, got %s:\n%s\n' "$1" "$rc" "$out"
      failed=1
    else
      printf 'ok: %s\n' "$1"
    fi
  }
  make_tree
  expect_ok "a tree that follows the table passes (comments, strings, groups, mod.rs re-exports, test modules)"

  make_tree
  printf 'use crate::http::state::AppState;\n' >>"$tmp/t/src/health.rs"
  expect_fail "service imports http" '^src/health\.rs:4: layer: health \(level 1.*imports http \(level 2'
  expect_fail "service names AppState" '^src/health\.rs:4: state-bag: '

  make_tree
  printf 'use crate::AppState;\n' >>"$tmp/t/src/metrics.rs"
  expect_fail "a lib.rs re-export counts as its module" '^src/metrics\.rs:6: layer: metrics .*imports http'

  make_tree
  printf 'fn f() { let _ = crate::metrics::x(); }\n' >>"$tmp/t/src/rules/load.rs"
  expect_fail "leaf uses a service inside an expression" '^src/rules/load\.rs:3: layer: rules \(level 0.*imports metrics \(level 1'

  make_tree
  printf 'use crate::{\n    clock,\n    app::serve,\n};\n' >"$tmp/t/src/health.rs"
  expect_fail "a multi-line use group is followed" '^src/health\.rs:1: layer: health .*imports app \(level 3'

  make_tree
  printf 'use tower_http::cors::CorsLayer;\n' >>"$tmp/t/src/backend/pool.rs"
  expect_fail "service uses tower" '^src/backend/pool\.rs:4: framework: backend'

  make_tree
  printf 'fn r() -> axum::Router { todo!() }\n' >>"$tmp/t/src/clock.rs"
  expect_fail "leaf uses axum" '^src/clock\.rs:2: framework: clock'

  make_tree
  printf 'use crate::metrics::Metrics;\n' >>"$tmp/t/src/health.rs"
  expect_fail "two services importing each other" '^src/health\.rs:4: cycle: (health -> metrics -> health|metrics -> health -> metrics)'

  make_tree
  sed -i '1a use super::pool::Pool;' "$tmp/t/src/backend/process.rs"
  expect_fail "two files of one directory module importing each other" '^src/backend/process\.rs:2: cycle: .*backend::process -> backend::pool'

  make_tree
  printf 'use crate::backend::process::Run;\n' >>"$tmp/t/src/backend/mod.rs"
  printf 'use crate::backend::Pool;\n' >>"$tmp/t/src/backend/process.rs"
  expect_ok "mod.rs re-exporting a child is not an edge back"

  make_tree
  printf 'pub struct AppState;\n' >"$tmp/t/src/state.rs"
  expect_fail "a module missing from the table" '^src/state\.rs:1: layer: module state is not in the layer table'

  # The real tree with one planted import: that line is reported, whatever else is.
  rm -rf "$tmp/t" && mkdir -p "$tmp/t"
  cp -R "$ROOT/src" "$tmp/t/src"
  local n
  n=$(($(wc -l <"$tmp/t/src/clock.rs") + 1))
  printf 'use crate::http::RequestId;\n' >>"$tmp/t/src/clock.rs"
  expect_fail "a bad import planted in a copy of src/" "^src/clock\\.rs:$n: layer: clock \\(level 0"

  if [[ $failed -ne 0 ]]; then
    echo "check-layers self-test: FAILED"
    return 1
  fi
  echo "check-layers self-test: ok"
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
case ${1:-} in
  "") ;;
  --root) ROOT=${2:?--root needs a directory} ;;
  --self-test) self_test; exit ;;
  -h|--help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

rc=0
out=$(check "$ROOT") || rc=$?
if [[ $rc -eq 0 ]]; then
  echo "layer check: ok"
else
  printf '%s\n' "$out"
  [[ $rc -eq 1 ]] && echo "layer check: $(grep -c . <<<"$out") violation(s)"
fi
exit "$rc"
