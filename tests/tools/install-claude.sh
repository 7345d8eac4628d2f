#!/usr/bin/env bash
# Installs Claude Code (npm @anthropic-ai/claude-code) into a prefix the real-CLI tests look in.
#   FLEET_CLAUDE_PREFIX   where to install (default /opt/fleet-tools/claude); the binary ends up in PREFIX/bin
#   FLEET_CLAUDE_VERSION  npm version or tag to install (default: 2.1.332, the version the tests were written against)
# Idempotent: does nothing when the requested version is already there.
set -euo pipefail

prefix="${FLEET_CLAUDE_PREFIX:-/opt/fleet-tools/claude}"
version="${FLEET_CLAUDE_VERSION:-2.1.332}"

if ! command -v npm >/dev/null 2>&1; then
    echo "install-claude: npm is required (install nodejs and npm first)" >&2
    exit 1
fi

bin="$prefix/bin/claude"
have=""
if [ -x "$bin" ]; then
    # `claude --version` prints "2.1.332 (Claude Code)"; no network is needed for it.
    have="$(DISABLE_AUTOUPDATER=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 "$bin" --version 2>/dev/null \
        | awk '{print $1}' || true)"
fi

if [ "$version" = "latest" ]; then
    # Offline with a copy already installed: keep it rather than fail.
    version="$(npm view @anthropic-ai/claude-code version 2>/dev/null || true)"
    if [ -z "$version" ]; then
        if [ -n "$have" ]; then
            echo "install-claude: registry not reachable; keeping claude $have in $prefix"
            exit 0
        fi
        version="latest"
    fi
fi

if [ -n "$have" ] && [ "$have" = "$version" ]; then
    echo "install-claude: claude $have already in $prefix"
    exit 0
fi

mkdir -p "$prefix"
npm install --global --no-audit --no-fund --prefix "$prefix" "@anthropic-ai/claude-code@$version"
# The package's postinstall puts the native binary in place of bin/claude.exe; an npm that skips install
# scripts (ignore-scripts, or scripts not allowed) leaves a placeholder, so run it here in that case.
if ! DISABLE_AUTOUPDATER=1 "$bin" --version >/dev/null 2>&1; then
    (cd "$prefix/lib/node_modules/@anthropic-ai/claude-code" && node install.cjs)
fi
echo "install-claude: claude $(DISABLE_AUTOUPDATER=1 "$bin" --version) installed in $prefix"
