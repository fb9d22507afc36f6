# syntax=docker/dockerfile:1
#
# ccgate container image: the ccgate binary plus a pinned Claude Code CLI.
#
#   docker build -t ccgate .
#   docker build -t ccgate --build-arg CLAUDE_CODE_VERSION=2.1.332 .
#
# SECURITY: the image listens on 0.0.0.0:8000 (CCGATE_LISTEN below). ccgate
# refuses to start on a non-loopback address unless CCGATE_API_KEYS is set (or
# CCGATE_ALLOW_UNAUTHENTICATED=true, for when something in front of it
# authenticates clients). deploy/docker-compose.yaml and deploy/kubernetes/
# therefore pass CCGATE_API_KEYS from .env / a Secret.
#
# Lint: scripts/lint-deploy.sh (hadolint).

ARG RUST_VERSION=1

# ---------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src

# Dependency cache layer: build every dependency against placeholder sources
# so this layer is reused until Cargo.toml or Cargo.lock change. Cargo refuses
# a manifest whose test or bench targets are missing, even for `cargo build`;
# the stub script writes one placeholder per target Cargo.toml declares
# (scripts/lint-deploy.sh proves this layer's manifest check passes).
COPY Cargo.toml Cargo.lock ./
COPY scripts/docker-stub-sources.sh /usr/local/bin/
RUN sh /usr/local/bin/docker-stub-sources.sh \
 && cargo build --release --locked \
 && rm -rf src tests benches

# The real sources. The whole context is copied (see .dockerignore) because the
# crate compiles files from outside src/ into the binary (the default
# rules/rules.yaml is embedded). `touch` makes sure cargo rebuilds the crate
# itself: COPY keeps the files' older modification times, which could make
# cargo believe the placeholder build is up to date.
COPY . .
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && install -m 0755 target/release/ccgate /usr/local/bin/ccgate

# ---------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------
# Node 22: Claude Code releases after 2.1.197 declare engines node>=22.
# Node is used only by npm at build time and by the HEALTHCHECK; the CLI
# itself is a native executable.
FROM node:22-bookworm-slim AS runtime

# Exact Claude Code CLI version. Change it deliberately and test: ccgate
# classifies the CLI's output, which differs between versions.
ARG CLAUDE_CODE_VERSION=2.1.332

# tini: PID 1 that forwards signals to ccgate and reaps orphaned processes
# left behind by CLI children. ca-certificates: TLS to the Anthropic API.
# DL3008 (pin apt versions) is ignored on purpose: Debian stable point releases
# replace package versions on the mirror, so exact pins break rebuilds
# (and differ per architecture). The bookworm base image fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# The Claude Code CLI. Install scripts must NOT be disabled (no
# --ignore-scripts, no --omit=optional): the postinstall step puts the native
# binary in place of a shell stub. `claude --version` fails the build if the
# stub is still there ("claude native binary not installed").
RUN npm install -g --no-audit --no-fund --no-update-notifier \
        "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
 && npm cache clean --force --no-update-notifier \
 && claude --version

# Unprivileged user. The CLI refuses bypass-permission mode as root, and
# nothing here needs root. HOME must be writable; CLAUDE_CONFIG_DIR holds the
# CLI's login and state (keep it on a volume to keep a `claude /login`).
RUN groupadd --system --gid 10001 ccgate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/ccgate \
        --create-home --shell /usr/sbin/nologin ccgate \
 && install -d -o 10001 -g 10001 -m 0700 /home/ccgate/.claude \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/ccgate \
 && install -d -m 0755 /etc/ccgate

COPY --from=build /usr/local/bin/ccgate /usr/local/bin/ccgate
# Default rules. Mount a directory over /etc/ccgate (docker -v, a Kubernetes
# ConfigMap) to replace them; ccgate reloads on change. /etc/ccgate is not
# declared as a VOLUME so that a run without a mount does not leave anonymous
# volumes behind.
COPY rules/rules.yaml /etc/ccgate/rules.yaml

ENV HOME=/home/ccgate \
    CLAUDE_CONFIG_DIR=/home/ccgate/.claude \
    DISABLE_AUTOUPDATER=1 \
    DISABLE_TELEMETRY=1 \
    CCGATE_LISTEN=0.0.0.0:8000 \
    CCGATE_RULES=/etc/ccgate/rules.yaml \
    CCGATE_STATE__PATH=/var/lib/ccgate/ccgate.db

# The CLI's login, and ccgate's state store (the usage ledger).
VOLUME ["/home/ccgate/.claude", "/var/lib/ccgate"]
WORKDIR /home/ccgate
# Numeric, so Kubernetes runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000

# Liveness via Node's built-in fetch (already in the image; no curl needed).
# Host and port follow CCGATE_LISTEN (a wildcard address is probed on
# 127.0.0.1). /health is 200 while the process serves;
# use /ready (503 while the CLI is unhealthy, e.g. not logged in) for routing.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["node", "-e", "const l=process.env.CCGATE_LISTEN||'0.0.0.0:8000',i=l.lastIndexOf(':'),p=l.slice(i+1);let h=l.slice(0,i);if(['','0.0.0.0','[::]'].includes(h))h='127.0.0.1';fetch('http://'+h+':'+p+'/health',{signal:AbortSignal.timeout(4000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]

# tini forwards SIGTERM to ccgate only (not to the whole process group), so
# ccgate can drain requests and then stop its own CLI children.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["ccgate", "serve"]
