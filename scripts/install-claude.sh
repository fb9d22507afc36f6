#!/usr/bin/env bash
# Idempotent installer for the pinned Claude Code CLI used by ccgate's real-CLI
# tests (tests/it/real_cli.rs) and by the README.
#
#   scripts/install-claude.sh            # installs if needed; last stdout line = executable path
#   export CCGATE_REAL_CLAUDE="$(scripts/install-claude.sh | tail -n1)"
#   scripts/install-claude.sh --platform [VERSION]   # the platform package's binary (default 2.1.336)
#
# Install dir: ${CCGATE_CLAUDE_CACHE:-$HOME/.cache/ccgate/claude-code}
# (with --platform: ${CCGATE_CLAUDE_CACHE:-$HOME/.cache/ccgate/claude-code-platform-VERSION})
#
# --platform: the npm package @anthropic-ai/claude-code stops at 2.1.332, while the
# platform packages (@anthropic-ai/claude-code-linux-x64 etc.) and the Agent SDK carry
# newer CLIs (2.1.336); users run both. A platform package IS the native binary (no
# postinstall, no Node at run time), so it installs directly. CI runs the real-CLI tests
# against both (docs/cli-versions.md has the tested range).
#
# Why 2.1.332: it is the version the spec (docs: cli.md) was measured on and the
# one the tests' expected texts/fields come from (e.g. `api_error_type`,
# `is_api_error_message`, which 2.1.197 lacks). It declares engines.node >=22, but
# on Node 20 npm only warns (EBADENGINE): Node runs just the postinstall
# (install.cjs), which links the native ELF binary over bin/claude.exe; at run
# time the CLI does not use Node at all. Verified on Node 20.20 / npm 11.
# Do NOT add --ignore-scripts / --omit=optional: the postinstall and the
# platform package (@anthropic-ai/claude-code-linux-x64 etc.) ARE the binary.
set -euo pipefail

if [ "${1:-}" = --platform ]; then
    VERSION="${2:-${CCGATE_CLAUDE_VERSION:-2.1.336}}"
    case "$(uname -s)-$(uname -m)" in
        Linux-x86_64) PLATFORM=linux-x64 ;;
        Linux-aarch64 | Linux-arm64) PLATFORM=linux-arm64 ;;
        Darwin-x86_64) PLATFORM=darwin-x64 ;;
        Darwin-arm64) PLATFORM=darwin-arm64 ;;
        *) echo "error: no platform package known for $(uname -s) $(uname -m)" >&2; exit 1 ;;
    esac
    # musl Linux (Alpine) has its own packages.
    if [ "$(uname -s)" = Linux ] && ldd --version 2>&1 | grep -qi musl; then PLATFORM="$PLATFORM-musl"; fi
    PACKAGE="@anthropic-ai/claude-code-$PLATFORM"
    DIR="${CCGATE_CLAUDE_CACHE:-$HOME/.cache/ccgate/claude-code-platform-$VERSION}"
    EXE="$DIR/node_modules/$PACKAGE/claude"
elif [ -n "${1:-}" ]; then
    echo "usage: $0 [--platform [VERSION]]" >&2
    exit 2
else
    VERSION="${CCGATE_CLAUDE_VERSION:-2.1.332}"
    PACKAGE="@anthropic-ai/claude-code"
    DIR="${CCGATE_CLAUDE_CACHE:-$HOME/.cache/ccgate/claude-code}"
    EXE="$DIR/node_modules/.bin/claude"
fi

installed_version() {
    # `claude --version` prints e.g. "2.1.332 (Claude Code)"; fast, no network.
    [ -x "$EXE" ] && "$EXE" --version 2>/dev/null | awk '{print $1}' || true
}

if [ "$(installed_version)" = "$VERSION" ]; then
    echo "claude $VERSION already installed in $DIR" >&2
else
    command -v npm >/dev/null || { echo "error: npm not found (Node.js >= 20 needed to install)" >&2; exit 1; }
    echo "installing $PACKAGE@$VERSION into $DIR ..." >&2
    mkdir -p "$DIR"
    [ -f "$DIR/package.json" ] || echo '{"name":"ccgate-claude-cache","private":true}' >"$DIR/package.json"
    # npm's own output goes to stderr so that stdout stays machine-readable.
    (cd "$DIR" && npm install --no-audit --no-fund --save-exact "$PACKAGE@$VERSION" 1>&2)
    got="$(installed_version)"
    if [ "$got" != "$VERSION" ] && [ -f "$DIR/node_modules/@anthropic-ai/claude-code/install.cjs" ]; then
        # npm >= 11 warns that install scripts are "not yet covered by allowScripts";
        # should a future npm skip the postinstall, run it by hand once.
        echo "postinstall seems not to have run; running install.cjs by hand" >&2
        (cd "$DIR/node_modules/@anthropic-ai/claude-code" && node install.cjs 1>&2)
        got="$(installed_version)"
    fi
    if [ "$got" != "$VERSION" ]; then
        echo "error: after install, '$EXE --version' gave '${got:-nothing}', expected $VERSION (were npm install scripts disabled? see the comment at the top)" >&2
        exit 1
    fi
fi

# Absolute path of the executable, always the last stdout line.
(cd "$(dirname "$EXE")" && echo "$(pwd -P)/$(basename "$EXE")")
