#!/usr/bin/env bash
# What matching, access lists and rate limits cost: worker CPU per request of a route
# with a path_regex, an allow list and a per-gateway rate limit (never reached), against
# the same gateway's plain prefix route, and nginx with `limit_req` and `allow` against
# its own plain location; and, when redis-server is installed, the same route counting in
# Redis on loopback (scope = "global"). One worker each, an nginx `return 200` backend,
# wrk keep-alive, rounds alternating.
#
# Knobs: ROUNDS (3), DURATION (5s), CONNECTIONS (20).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-20}
export PATH="$PATH:/usr/sbin:/sbin"
for tool in wrk nginx python3; do
  command -v $tool >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
cargo build --release --bin gateway
WORK=$(mktemp -d)
chmod 755 "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/logs" "$WORK/tmp"
cat > "$WORK/backend.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/backend.pid; error_log $WORK/logs/backend.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18590; location / { return 200 "ok"; } } }
CONF
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log $WORK/logs/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  proxy_temp_path $WORK/tmp; client_body_temp_path $WORK/tmp;
  upstream app { server 127.0.0.1:18590; keepalive 64; }
  limit_req_zone \$binary_remote_addr zone=per_ip:10m rate=1000000r/s;
  server {
    listen 127.0.0.1:18591;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location ~ ^/api/v[0-9]+/ {
      allow 127.0.0.0/8; deny all;
      limit_req zone=per_ip burst=1000000 nodelay;
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
    }
  }
}
CONF
cat > "$WORK/gateway.toml" <<CONF
[gateway]
workers = 1
control_socket = "gateway.sock"
access_log = "off"
[[listener]]
listen = "127.0.0.1:18592"
[[route]]
path_regex = "^/api/v[0-9]+/"
allow = ["127.0.0.0/8"]
rate_limit = { rate = "1000000/s", burst = 1000000 }
upstream = "app"
[[route]]
upstream = "app"
[upstream.app]
keepalive = 64
servers = [ { address = "127.0.0.1:18590" } ]
CONF
ROWS=("gateway-plain" "gateway-limited" "nginx-plain" "nginx-limited")
if command -v redis-server >/dev/null; then
  redis-server --bind 127.0.0.1 --port 18593 --save "" --appendonly no >/dev/null & PIDS+=($!)
  cat >> "$WORK/gateway.toml" <<CONF
[redis]
url = "redis://127.0.0.1:18593/0"
[[route]]
path_regex = "^/global/v[0-9]+/"
allow = ["127.0.0.0/8"]
rate_limit = { rate = "1000000/s", burst = 1000000, scope = "global" }
upstream = "app"
CONF
  ROWS+=("gateway-global")
else
  echo "redis-server not installed: no global row" >&2
fi
nginx -c "$WORK/backend.conf" & PIDS+=($!)
nginx -c "$WORK/nginx.conf" & PIDS+=($!); NGINX=$!
target/release/gateway -c "$WORK/gateway.toml" 2>"$WORK/logs/gateway.err" & PIDS+=($!); GATEWAY=$!
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# cpu PARENT PORT PATH: worker CPU microseconds per request
cpu() {
  local w t0 t1 reqs
  w=$(pgrep -P "$1" | head -1)
  t0=$(ticks "$w")
  reqs=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$2$3" | awk '/requests in/ {print $1}')
  t1=$(ticks "$w")
  python3 -c "print(($t1 - $t0) * 10000 / max($reqs, 1))"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
declare -A V
for r in $(seq 1 "$ROUNDS"); do
  for row in "gateway-plain $GATEWAY 18592 /x" "gateway-limited $GATEWAY 18592 /api/v1/x" "nginx-plain $NGINX 18591 /x" "nginx-limited $NGINX 18591 /api/v1/x" "gateway-global $GATEWAY 18592 /global/v1/x"; do
    set -- $row
    [[ " ${ROWS[*]} " == *" $1 "* ]] || continue
    V[$1]+="$(cpu "$2" "$3" "$4") "
  done
done
echo "Worker CPU us per request, $ROUNDS rounds of $DURATION (medians)"
declare -A M
for n in "${ROWS[@]}"; do
  M[$n]=$(echo ${V[$n]} | tr ' ' '\n' | median)
  printf "%-18s %8.2f\n" "$n" "${M[$n]}"
done
python3 -c "
g, gl, n, nl = ${M[gateway-plain]}, ${M[gateway-limited]}, ${M[nginx-plain]}, ${M[nginx-limited]}
print(f'gateway: regex + allow + rate limit cost {gl / g - 1:+.1%} over its plain route')
print(f'nginx:   regex + allow + limit_req cost {nl / n - 1:+.1%} over its plain location')
print(f'gateway/nginx, limited route: {gl / nl:.2f}x; plain: {g / n:.2f}x')
glob = '${M[gateway-global]:-}'
if glob:
    print(f'gateway: the same route counting in Redis costs {float(glob) / g - 1:+.1%} over its plain route')"
