#!/usr/bin/env bash
# Zero-downtime restart of an app's instances behind the gateway, one at a time (what PM2's
# `reload` does, done at the front door): for each server, drain it and wait until it has
# nothing in flight, restart it, wait until it accepts connections, and enable it again.
#
# Usage: rolling-restart.sh UPSTREAM RESTART_COMMAND SERVER...
#   RESTART_COMMAND is run with the server's address as its argument, e.g.
#   'systemctl restart app@' style wrappers or 'docker restart' through a small script.
# Environment: GATEWAYCTL (default: gatewayctl on the PATH), GATEWAY_SOCKET (the control
# socket, as for gatewayctl), DRAIN_TIMEOUT (60s), START_TIMEOUT seconds (30).
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,11p "$0" >&2; exit 2; }
upstream=$1 restart=$2
shift 2
ctl=${GATEWAYCTL:-gatewayctl}

accepts() { # host:port
  local host=${1%:*} port=${1##*:}
  host=${host#[}
  host=${host%]}
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# What this script changed and must undo if it stops early: the server it drained. A
# drain that times out (a WebSocket still open) or a restart command that fails leaves the
# old instance serving, so it is enabled again; only a server that did not come back
# after its restart stays drained (enabling it would send requests to nothing).
drained=
restore() {
  if [ -n "$drained" ]; then
    echo "== $drained: stopped early: enabling it again" >&2
    "$ctl" enable "$upstream" "$drained" || true
  fi
}
trap restore EXIT

for server in "$@"; do
  echo "== $server: draining"
  drained=$server
  "$ctl" drain "$upstream" "$server" --wait --timeout "${DRAIN_TIMEOUT:-60s}"
  echo "== $server: restarting"
  $restart "$server"
  for _ in $(seq 1 $((${START_TIMEOUT:-30} * 10))); do
    accepts "$server" && break
    sleep 0.1
  done
  accepts "$server" || { drained=; echo "$server did not come back; it stays drained" >&2; exit 1; }
  echo "== $server: enabling"
  "$ctl" enable "$upstream" "$server"
  drained=
done
echo "all $# servers restarted"
