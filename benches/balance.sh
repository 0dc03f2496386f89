#!/usr/bin/env bash
# Balancing under a degraded backend: three backends answer in DELAY ms, one of them is
# slow (SLOW_FACTOR x DELAY) for the whole run and, from STUCK_AT s on, stuck for STUCK_FOR s
# (answers held). The same open-loop load (RATE requests/s for DURATION s, examples/loadgen.rs)
# goes through the gateway with round_robin, least_conn and least_time, and through nginx
# with least_conn. Prints p50/p99/p99.9, the slow server's share and the errors.
# Everything stays on 127.0.0.1.
#
# Knobs (environment): RATE (400), DURATION (20, seconds), DELAY (2), SLOW_FACTOR (10), STUCK_AT (8),
# STUCK_FOR (4), WORKERS (2, for the gateway and nginx alike).
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-400}
SECONDS_RUN=${DURATION:-20}
DELAY=${DELAY:-2}
SLOW_FACTOR=${SLOW_FACTOR:-10}
STUCK_AT=${STUCK_AT:-8}
STUCK_FOR=${STUCK_FOR:-4}
WORKERS=${WORKERS:-2}
PORT_A=18181 PORT_B=18182 PORT_C=18183 GATEWAY_PORT=18184 NGINX_PORT=18185
export PATH="$PATH:/usr/sbin:/sbin"

[ -x target/release/gateway ] && [ -x target/release/examples/loadgen ] &&
  [ -x target/release/examples/balance_backend ] ||
  cargo build --release --bin gateway --example loadgen --example balance_backend
HAVE_NGINX=1
if ! command -v nginx >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null 2>&1 || true
  fi
  command -v nginx >/dev/null 2>&1 || { HAVE_NGINX=0; echo "nginx not installable: its row is skipped" >&2; }
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT

# Fresh backends for each row, so each sees the slow and stuck periods at the same time.
BACKENDS=()
start_backends() {
  for p in "${BACKENDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  BACKENDS=()
  target/release/examples/balance_backend a "127.0.0.1:$PORT_A" "$DELAY" & BACKENDS+=($!)
  target/release/examples/balance_backend b "127.0.0.1:$PORT_B" "$DELAY" & BACKENDS+=($!)
  target/release/examples/balance_backend slow "127.0.0.1:$PORT_C" $((DELAY * SLOW_FACTOR)) \
    "$STUCK_AT" "$STUCK_FOR" & BACKENDS+=($!)
  PIDS+=("${BACKENDS[@]}")
  sleep 0.3
}

declare -A RESULT
run_row() { # label port
  echo "  $1 ..." >&2
  RESULT[$1]=$(target/release/examples/loadgen "http://127.0.0.1:$2/" "$RATE" "$SECONDS_RUN")
}

for policy in round_robin least_conn least_time; do
  cat > "$WORK/gateway-$policy.toml" <<CONF
[gateway]
workers = $WORKERS
access_log = "off"
control_socket = "$WORK/gateway-$policy.sock"
[[listener]]
listen = "127.0.0.1:$GATEWAY_PORT"
[[route]]
upstream = "app"
[upstream.app]
policy = "$policy"
read_timeout = "30s"
servers = [ { address = "127.0.0.1:$PORT_A" }, { address = "127.0.0.1:$PORT_B" }, { address = "127.0.0.1:$PORT_C" } ]
CONF
  start_backends
  target/release/gateway -c "$WORK/gateway-$policy.toml" 2>"$WORK/gateway-$policy.err" &
  gw=$!
  PIDS+=($gw)
  for _ in $(seq 1 100); do grep -q "workers serving" "$WORK/gateway-$policy.err" && break; sleep 0.1; done
  run_row "gateway $policy" $GATEWAY_PORT
  kill $gw; wait $gw 2>/dev/null || true
done

if [ $HAVE_NGINX = 1 ]; then
  mkdir -p "$WORK/nginx/tmp"
  cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes $WORKERS;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  proxy_temp_path $WORK/nginx/tmp;
  client_body_temp_path $WORK/nginx/tmp;
  upstream app {
    least_conn;
    server 127.0.0.1:$PORT_A; server 127.0.0.1:$PORT_B; server 127.0.0.1:$PORT_C;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 30s;
    }
  }
}
CONF
  start_backends
  nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
  ng=$!
  PIDS+=($ng)
  sleep 0.5
  run_row "nginx least_conn" $NGINX_PORT
  kill $ng; wait $ng 2>/dev/null || true
fi

echo
echo "$RATE requests/s for ${SECONDS_RUN}s (open loop); backends answer in ${DELAY} ms, 'slow' in $((DELAY * SLOW_FACTOR)) ms and stuck from ${STUCK_AT}s for ${STUCK_FOR}s; $WORKERS workers"
printf '%-22s %9s %9s %10s %12s %8s\n' "" "p50 ms" "p99 ms" "p99.9 ms" "slow share" "errors"
for label in "gateway round_robin" "gateway least_conn" "gateway least_time" "nginx least_conn"; do
  [ -n "${RESULT[$label]:-}" ] || continue
  read -r p50 p99 p999 errors total rest <<<"${RESULT[$label]}"
  slow=$(tr ' ' '\n' <<<"$rest" | awk -F= '$1 == "slow" {print $2}')
  share=$(awk -v s="${slow:-0}" -v t="$total" 'BEGIN {printf "%.1f%%", 100 * s / t}')
  printf '%-22s %9s %9s %10s %12s %8s\n' "$label" "$p50" "$p99" "$p999" "$share" "$errors"
done
