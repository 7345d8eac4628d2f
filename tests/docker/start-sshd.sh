#!/usr/bin/env bash
# An SSH server on loopback for the pool tests' ssh:// host: Debian's openssh-server run with its own config
# (127.0.0.1:2222, keys only), a throwaway host key and client key in a state dir, the client key authorized
# for the current user, and a `Host fleet-ssh-test` entry in ~/.ssh/config (ssh, which the docker SDK shells
# out to, reads only that file). Sessions get DOCKER_HOST of the second engine, so
# `ssh://USER@fleet-ssh-test` reaches it with `docker system dial-stdio`.
#   start-sshd.sh [start] | stop | status
# Needs root (or sshd installed and a free port) and the docker CLI.
set -euo pipefail

PORT="${FLEET_SSHD_PORT:-2222}"
STATE="${FLEET_SSHD_DIR:-/tmp/fleet-sshd}"
ALIAS="${FLEET_SSHD_ALIAS:-fleet-ssh-test}"
REMOTE_DOCKER_HOST="${FLEET_SSHD_DOCKER_HOST:-unix://${FLEET_ENGINE2_SOCK:-/run/fleet-docker2.sock}}"
USER_NAME="$(id -un)"
SSH_DIR="$(getent passwd "$USER_NAME" | cut -d: -f6)/.ssh"

say() { printf '[sshd] %s\n' "$*" >&2; }
up() { ssh -o BatchMode=yes -o ConnectTimeout=3 "$USER_NAME@$ALIAS" true >/dev/null 2>&1; }

case "${1:-start}" in
status) up ;;
stop)
    if [ -f "$STATE/sshd.pid" ]; then kill "$(cat "$STATE/sshd.pid")" 2>/dev/null || true; rm -f "$STATE/sshd.pid"; fi
    ;;
start)
    if ! command -v sshd >/dev/null && ! [ -x /usr/sbin/sshd ]; then
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                openssh-server >/dev/null
        else
            say "openssh-server is not installed"; exit 1
        fi
    fi
    SSHD="$(command -v sshd || echo /usr/sbin/sshd)"
    mkdir -p "$STATE" "$SSH_DIR" /run/sshd
    chmod 700 "$STATE" "$SSH_DIR"
    [ -f "$STATE/host_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$STATE/host_key"
    [ -f "$STATE/client_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$STATE/client_key" -C fleet-ssh-test
    cp "$STATE/client_key.pub" "$STATE/authorized_keys"
    chmod 600 "$STATE/authorized_keys"
    cat >"$STATE/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $PORT
HostKey $STATE/host_key
PidFile $STATE/sshd.pid
AuthorizedKeysFile $STATE/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowUsers $USER_NAME
UsePAM no
StrictModes no
SetEnv DOCKER_HOST=$REMOTE_DOCKER_HOST
MaxStartups 100:30:200
MaxSessions 100
CONF
    echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$STATE/host_key.pub")" >"$STATE/known_hosts"
    touch "$SSH_DIR/config"
    if ! grep -q "^Host $ALIAS\$" "$SSH_DIR/config"; then
        { printf '\n# pool tests (tests/docker/start-sshd.sh)\nHost %s\n' "$ALIAS"
          printf '  HostName 127.0.0.1\n  Port %s\n  IdentityFile %s/client_key\n  IdentitiesOnly yes\n' "$PORT" "$STATE"
          printf '  UserKnownHostsFile %s/known_hosts\n  StrictHostKeyChecking yes\n  BatchMode yes\n' "$STATE"
        } >>"$SSH_DIR/config"
        chmod 600 "$SSH_DIR/config"
    fi
    if ! up; then
        [ -f "$STATE/sshd.pid" ] && kill "$(cat "$STATE/sshd.pid")" 2>/dev/null || true
        "$SSHD" -f "$STATE/sshd_config" -E "$STATE/sshd.log"
        for _ in $(seq 1 50); do up && break; sleep 0.2; done
        up || { say "sshd did not answer; see $STATE/sshd.log"; tail -20 "$STATE/sshd.log" >&2; exit 1; }
    fi
    say "up: ssh://$USER_NAME@$ALIAS (127.0.0.1:$PORT) -> $REMOTE_DOCKER_HOST"
    ;;
*) say "usage: $0 [start|stop|status]"; exit 2 ;;
esac
