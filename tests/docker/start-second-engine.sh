#!/usr/bin/env bash
# A second Docker engine on this machine for the pool tests: its own socket, data root, exec root and pid
# file, reachable over unix:// (FLEET_ENGINE2_SOCK) and plain tcp:// on loopback (FLEET_ENGINE2_TCP, test
# use only: no TLS), with the test image loaded from the first engine (no registry). `--live-restore`
# keeps its containers running while the engine itself is stopped, which is what "a host goes away and
# comes back" looks like to the fleet.
#   start-second-engine.sh [start]   start it (idempotent) and load the image
#   start-second-engine.sh stop      stop the engine (its containers keep running)
#   start-second-engine.sh status    exit 0 when it answers
# Needs root and dockerd.
set -euo pipefail

SOCK="${FLEET_ENGINE2_SOCK:-/run/fleet-docker2.sock}"
TCP="${FLEET_ENGINE2_TCP:-127.0.0.1:23750}"
DATA="${FLEET_ENGINE2_DATA:-/var/lib/fleet-docker2}"
EXEC="${FLEET_ENGINE2_EXEC:-/run/fleet-docker2}"
PIDFILE="${FLEET_ENGINE2_PID:-/run/fleet-docker2.pid}"
LOG="${FLEET_ENGINE2_LOG:-/tmp/fleet-docker2.log}"
IMAGE="${FLEET_TEST_IMAGE:-fleet-test:latest}"

say() { printf '[second-engine] %s\n' "$*" >&2; }
up() { docker -H "unix://$SOCK" version >/dev/null 2>&1; }

case "${1:-start}" in
status)
    up
    ;;
stop)
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        pid=$(cat "$PIDFILE")
        kill -TERM "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        say "stopped (pid $pid)"
    fi
    ;;
start)
    if ! up; then
        mkdir -p "$DATA" "$EXEC"
        rm -f "$SOCK"
        # containerd of the second engine lives under its exec root; the first engine's is left alone
        (setsid dockerd --host "unix://$SOCK" --host "tcp://$TCP" --data-root "$DATA" --exec-root "$EXEC" \
            --pidfile "$PIDFILE" --live-restore --iptables=false --ip6tables=false --bridge=none \
            --storage-driver=vfs >>"$LOG" 2>&1 </dev/null &)
        for _ in $(seq 1 120); do up && break; sleep 0.5; done
        up || { say "did not start; see $LOG"; tail -20 "$LOG" >&2; exit 1; }
        say "up at unix://$SOCK and tcp://$TCP"
    fi
    if ! docker -H "unix://$SOCK" image inspect "$IMAGE" >/dev/null 2>&1; then
        docker image inspect "$IMAGE" >/dev/null 2>&1 || { say "$IMAGE is not on the first engine"; exit 1; }
        docker save "$IMAGE" | docker -H "unix://$SOCK" load >/dev/null
        say "loaded $IMAGE"
    fi
    ;;
*)
    say "usage: $0 [start|stop|status]"; exit 2
    ;;
esac
