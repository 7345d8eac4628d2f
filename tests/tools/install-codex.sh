#!/usr/bin/env bash
# Installs the Codex CLI (npm @openai/codex) into a prefix the real-CLI tests look in.
#   FLEET_CODEX_PREFIX   where to install (default /opt/fleet-tools/codex); the binary ends up in PREFIX/bin
#   FLEET_CODEX_VERSION  npm version or tag to install (default: 0.169.0, the version the tests were written against)
# Idempotent: does nothing when the requested version is already there.
set -euo pipefail

prefix="${FLEET_CODEX_PREFIX:-/opt/fleet-tools/codex}"
version="${FLEET_CODEX_VERSION:-0.169.0}"

if ! command -v npm >/dev/null 2>&1; then
    echo "install-codex: npm is required (install nodejs and npm first)" >&2
    exit 1
fi

bin="$prefix/bin/codex"
have=""
if [ -x "$bin" ]; then
    have="$("$bin" --version 2>/dev/null | awk '{print $NF}' || true)"
fi

if [ "$version" = "latest" ]; then
    # Offline with a copy already installed: keep it rather than fail.
    version="$(npm view @openai/codex version 2>/dev/null || true)"
    if [ -z "$version" ]; then
        if [ -n "$have" ]; then
            echo "install-codex: registry not reachable; keeping codex $have in $prefix"
            exit 0
        fi
        version="latest"
    fi
fi

if [ -n "$have" ] && [ "$have" = "$version" ]; then
    echo "install-codex: codex $have already in $prefix"
    exit 0
fi

mkdir -p "$prefix"
npm install --global --no-audit --no-fund --prefix "$prefix" "@openai/codex@$version"
echo "install-codex: $("$bin" --version) installed in $prefix"
