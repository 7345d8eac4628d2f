#!/usr/bin/env bash
# Installs aider (PyPI aider-chat) into its own virtualenv under a prefix the real-aider tests look in.
#   FLEET_AIDER_PREFIX   where to install (default /opt/fleet-tools/aider); the binary ends up in PREFIX/bin
#   FLEET_AIDER_VERSION  aider-chat version to install (default: 0.86.2, the version the tests were written against)
#   FLEET_AIDER_PYTHON   interpreter for the venv (default: the first of python3.12, 3.11, 3.10, python3 that
#                        is 3.10 to 3.12, which aider-chat 0.86.2 requires)
# Idempotent: does nothing when the requested version is already there.
set -euo pipefail

prefix="${FLEET_AIDER_PREFIX:-/opt/fleet-tools/aider}"
version="${FLEET_AIDER_VERSION:-0.86.2}"
bin="$prefix/bin/aider"
have=""
if [ -x "$bin" ]; then
    # Asking aider itself would start it (slow, and it may look for updates); the venv's metadata is enough.
    have="$("$prefix/bin/python" -c 'import importlib.metadata as m; print(m.version("aider-chat"))' 2>/dev/null || true)"
fi

if [ -n "$have" ] && [ "$have" = "$version" ]; then
    echo "install-aider: aider $have already in $prefix"
    exit 0
fi

fits='import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))'
python="${FLEET_AIDER_PYTHON:-}"
if [ -z "$python" ]; then
    # The first interpreter that runs and fits (a pyenv shim may exist without its version installed).
    for candidate in python3.12 python3.11 python3.10 python3; do
        if "$candidate" -c "$fits" 2>/dev/null; then
            python="$candidate"
            break
        fi
    done
fi
if [ -z "$python" ] || ! "$python" -c "$fits" 2>/dev/null; then
    echo "install-aider: no Python 3.10 to 3.12 found (aider-chat $version needs one); install one, or set" \
         "FLEET_AIDER_PYTHON to its path" >&2
    exit 1
fi

start=$(date +%s)
if [ ! -x "$prefix/bin/python" ]; then
    mkdir -p "$prefix"
    "$python" -m venv "$prefix"
fi
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check "aider-chat==$version"
echo "install-aider: $("$bin" --version </dev/null) installed in $prefix in $(( $(date +%s) - start ))s"
