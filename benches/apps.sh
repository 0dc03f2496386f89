#!/usr/bin/env bash
# A rolling restart of a Node.js app's instances under load: the gateway running the app
# (`[app.web]`, `gatewayctl restart web`) against PM2's cluster mode behind nginx
# (`pm2 start -i N`, `pm2 reload web`, nginx proxying to the cluster's port with
# keep-alive, as PM2's docs set it up). The same app (tests/apps/web.js), once graceful on
# SIGTERM and SIGINT and once with Node's default (exit at once on a signal, as most apps
# are); wrk keep-alive for DURATION with RESTARTS restarts spread over it; counted:
# requests, non-2xx answers and socket errors. PM2 comes from npm (installed
# under the work directory when `pm2` is not on the PATH).
#
# Requests take WORK_MS in the app (20 ms: an app that asks a database), so a restart
# finds some in flight.
#
# Knobs: INSTANCES (4), ROUNDS (3), DURATION (12s), RESTARTS (3), CONNECTIONS (16),
# WORK_MS (20).
set -euo pipefail
cd "$(dirname "$0")/.."
INSTANCES=${INSTANCES:-4}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-12}
RESTARTS=${RESTARTS:-3}
CONNECTIONS=${CONNECTIONS:-16}
WORK_MS=${WORK_MS:-20}
export PATH="$PATH:/usr/sbin:/sbin"
for tool in wrk nginx node npm; do
  command -v $tool >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
cargo build --release --bin gateway --bin gatewayctl
ROOT=$(pwd)
WORK=$(mktemp -d)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  [ -n "${PM2:-}" ] && PM2_HOME="$WORK/pm2" "$PM2" kill >/dev/null 2>&1 || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5; rm -rf "$WORK"
}
trap cleanup EXIT
PM2=$(command -v pm2 || true)
if [ -z "$PM2" ]; then
  (cd "$WORK" && npm install --silent --no-audit --no-fund pm2 >/dev/null 2>&1) ||
    { echo "cannot install pm2 from npm" >&2; exit 1; }
  PM2="$WORK/node_modules/.bin/pm2"
fi
mkdir -p "$WORK/logs" "$WORK/tmp"

# wrk for DURATION seconds while `restart` runs RESTARTS times; prints "requests errors".
under_load() {
  local url=$1; shift
  wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" "$url" > "$WORK/wrk.out" 2>&1 &
  local wrk=$!
  local gap=$((DURATION / (RESTARTS + 1)))
  for _ in $(seq 1 "$RESTARTS"); do sleep "$gap"; "$@" >/dev/null 2>&1 || echo "restart failed" >&2; done
  wait $wrk
  local requests non2xx socket
  requests=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.out")
  socket=$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' "$WORK/wrk.out")
  echo "$requests $(( ${non2xx:-0} + ${socket:-0} ))"
}

start_both() {
# The gateway running the app.
cat > "$WORK/gateway.toml" <<CONF
[gateway]
workers = 1
control_socket = "$WORK/gateway.sock"
[[listener]]
listen = "127.0.0.1:18610"
[[route]]
upstream = "web"
[upstream.web]
servers = [{ app = "web" }]
[app.web]
command = ["node", "web.js"]
dir = "$ROOT/tests/apps"
instances = $INSTANCES
port = 18620
ready = { path = "/healthz" }
stop_timeout = "5s"
log = "$WORK/logs/web.log"
env = { GRACEFUL = "$1" }
CONF
./target/release/gateway -c "$WORK/gateway.toml" 2>> "$WORK/logs/gateway.err" &
GATEWAY=$!
PIDS+=($GATEWAY)

# PM2's cluster mode on one port, nginx in front.
PM2_HOME="$WORK/pm2" PORT=18640 HOST=127.0.0.1 GRACEFUL=$1 "$PM2" start "$ROOT/tests/apps/web.js" \
  -i "$INSTANCES" --name web >/dev/null
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log $WORK/logs/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  proxy_temp_path $WORK/tmp; client_body_temp_path $WORK/tmp;
  upstream web { server 127.0.0.1:18640; keepalive 64; }
  server { listen 127.0.0.1:18630;
    location / { proxy_pass http://web; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
nginx -c "$WORK/nginx.conf" &
NGINX=$!
PIDS+=($NGINX)
for url in http://127.0.0.1:18610/ http://127.0.0.1:18630/; do
  for _ in $(seq 1 100); do curl -sf "$url" >/dev/null && break; sleep 0.1; done
done
}

stop_both() {
  ./target/release/gatewayctl -s "$WORK/gateway.sock" stop >/dev/null 2>&1 || true
  PM2_HOME="$WORK/pm2" "$PM2" delete web >/dev/null 2>&1 || true
  kill "$NGINX" 2>/dev/null || true
  wait "$GATEWAY" "$NGINX" 2>/dev/null || true
}

printf "%-66s %10s %10s\n" "rolling restarts of $INSTANCES instances under load" requests failed
for graceful in 1 0; do
  if [ $graceful = 1 ]; then app="graceful app"; else app="app exiting at once on a signal"; fi
  start_both $graceful
  for round in $(seq 1 "$ROUNDS"); do
    read -r req err < <(under_load "http://127.0.0.1:18610/slow?ms=$WORK_MS" ./target/release/gatewayctl -s "$WORK/gateway.sock" restart web)
    printf "%-66s %10s %10s\n" "$app, round $round: gateway runs it" "$req" "$err"
    read -r req err < <(under_load "http://127.0.0.1:18630/slow?ms=$WORK_MS" env PM2_HOME="$WORK/pm2" "$PM2" reload web)
    printf "%-66s %10s %10s\n" "$app, round $round: PM2 cluster behind nginx" "$req" "$err"
  done
  stop_both
done
