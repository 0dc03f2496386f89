#!/usr/bin/env bash
# Side-by-side: the gateway, nginx and HAProxy, one worker each, proxying the same fast
# backend (nginx `return 200`), driven by wrk from this machine in alternating rounds.
# Prints req/s, p99 latency, proxy CPU microseconds per request and proxy RSS, with the
# gateway's ratios against each. Everything stays on 127.0.0.1.
#
# Knobs (environment): ROUNDS (3), DURATION (10s), CONNECTIONS (50), THREADS (1).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
BACKEND_PORT=${BACKEND_PORT:-18080}
GATEWAY_PORT=18081
NGINX_PORT=18082
HAPROXY_PORT=18083
GATEWAY_TLS_PORT=18084
NGINX_TLS_PORT=18085

install_if_missing() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $2 ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1; } || true
  fi
  command -v "$1" >/dev/null 2>&1
}
export PATH="$PATH:/usr/sbin:/sbin"
install_if_missing wrk wrk || { echo "wrk is needed and could not be installed" >&2; exit 1; }
install_if_missing nginx nginx-light || { echo "nginx is needed for the backend and could not be installed" >&2; exit 1; }
HAVE_HAPROXY=1
install_if_missing haproxy haproxy || { HAVE_HAPROXY=0; echo "haproxy not installable: its rows are skipped" >&2; }

[ -x target/release/gateway ] || cargo build --release --bin gateway
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT

mkdir -p "$WORK"/{backend,nginx,logs}
HAVE_TLS=0
if command -v openssl >/dev/null 2>&1 &&
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -keyout "$WORK/site.key" -out "$WORK/site.crt" -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost >/dev/null 2>&1; then
  HAVE_TLS=1
else
  echo "openssl not available: TLS rows skipped" >&2
fi
NGINX_TLS_SERVER=""
GATEWAY_TLS_LISTENER=""
if [ $HAVE_TLS = 1 ]; then
  NGINX_TLS_SERVER="server {
    listen 127.0.0.1:$NGINX_TLS_PORT ssl;
    ssl_certificate $WORK/site.crt;
    ssl_certificate_key $WORK/site.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP \$remote_addr;
    }
  }"
  GATEWAY_TLS_LISTENER="[[listener]]
listen = \"127.0.0.1:$GATEWAY_TLS_PORT\"
tls = [ { cert = \"$WORK/site.crt\", key = \"$WORK/site.key\" } ]"
fi
cat > "$WORK/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/logs/backend.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND_PORT; location / { return 200 "ok\n"; } }
}
CONF
cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/logs/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$BACKEND_PORT; keepalive 32; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP \$remote_addr;
    }
  }
  $NGINX_TLS_SERVER
}
CONF
cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 3s
  timeout client 60s
  timeout server 60s
  option forwardfor
frontend f
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:$BACKEND_PORT
CONF
cat > "$WORK/gateway.toml" <<CONF
[gateway]
workers = 1
access_log = "off"
control_socket = "$WORK/gateway.sock"
[[listener]]
listen = "127.0.0.1:$GATEWAY_PORT"
$GATEWAY_TLS_LISTENER
[[route]]
upstream = "app"
[upstream.app]
servers = [ { address = "127.0.0.1:$BACKEND_PORT" } ]
keepalive = 32
CONF

# The proxies run on CPU 0; wrk and the backend share CPU 1 (same for every proxy).
# (taskset execs the command, so $! is the server's own pid.)
CPU0=(); CPU1=()
if command -v taskset >/dev/null 2>&1; then CPU0=(taskset -c 0); CPU1=(taskset -c 1); fi
"${CPU1[@]}" nginx -c "$WORK/backend/nginx.conf" >/dev/null 2>&1 & PIDS+=($!)
"${CPU0[@]}" target/release/gateway -c "$WORK/gateway.toml" >/dev/null 2>"$WORK/logs/gateway.err" & PIDS+=($!); GATEWAY_PID=$!
"${CPU0[@]}" nginx -c "$WORK/nginx/nginx.conf" >/dev/null 2>&1 & PIDS+=($!)
if [ $HAVE_HAPROXY = 1 ]; then "${CPU0[@]}" haproxy -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 & PIDS+=($!); HAPROXY_PID=$!; fi
sleep 1
NGINX_PID=$(pgrep -f "nginx: worker process" -P "$(cat "$WORK/nginx/nginx.pid")" | head -1)

for port in $BACKEND_PORT $GATEWAY_PORT $NGINX_PORT; do
  curl -sf "http://127.0.0.1:$port/" >/dev/null || { echo "nothing answers on port $port" >&2; cat "$WORK"/logs/* >&2; exit 1; }
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
TICK=$(getconf CLK_TCK)

declare -A RPS P99 CPU RSS
run_one() { # name url pid [wrk options]
  local before after out rps p99 reqs
  before=$(cpu_ticks "$3")
  out=$("${CPU1[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "${@:4}" "$2")
  after=$(cpu_ticks "$3")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1=="99%" { v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v }' <<<"$out")
  local errors; errors=$(awk '/Socket errors|Non-2xx/ {print}' <<<"$out")
  [ -n "$errors" ] && echo "  $1: $errors" >&2
  RPS[$1]="${RPS[$1]:-} $rps"
  P99[$1]="${P99[$1]:-} $p99"
  CPU[$1]="${CPU[$1]:-} $(awk -v t=$((after - before)) -v hz="$TICK" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')"
  RSS[$1]=$(rss_kib "$3")
  echo "  round $round $1: $rps req/s, p99 ${p99} ms" >&2
}

NAMES=(gateway nginx)
[ $HAVE_HAPROXY = 1 ] && NAMES+=(haproxy)
echo "warming up ..." >&2
for port in $GATEWAY_PORT $NGINX_PORT; do wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/" >/dev/null; done
# The gateway's supervisor only waits; its worker is the process that does the work.
GATEWAY_WORKER_PID=$(pgrep -P "$GATEWAY_PID" | head -1)
for round in $(seq 1 "$ROUNDS"); do
  run_one gateway "http://127.0.0.1:$GATEWAY_PORT/" "$GATEWAY_WORKER_PID"
  run_one nginx "http://127.0.0.1:$NGINX_PORT/" "$NGINX_PID"
  [ $HAVE_HAPROXY = 1 ] && run_one haproxy "http://127.0.0.1:$HAPROXY_PORT/" "$HAPROXY_PID"
  if [ $HAVE_TLS = 1 ]; then
    run_one gateway-tls "https://localhost:$GATEWAY_TLS_PORT/" "$GATEWAY_WORKER_PID"
    run_one nginx-tls "https://localhost:$NGINX_TLS_PORT/" "$NGINX_PID"
    run_one gateway-handshake "https://localhost:$GATEWAY_TLS_PORT/" "$GATEWAY_WORKER_PID" -H "Connection: close"
    run_one nginx-handshake "https://localhost:$NGINX_TLS_PORT/" "$NGINX_PID" -H "Connection: close"
  fi
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A M_RPS M_P99 M_CPU
table() { # title names...
  echo
  echo "$1"
  printf '%-18s %12s %10s %14s %10s\n' proxy "req/s" "p99 ms" "CPU us/req" "RSS MiB"
  for n in "${@:2}"; do
    M_RPS[$n]=$(median <<<"${RPS[$n]}"); M_P99[$n]=$(median <<<"${P99[$n]}"); M_CPU[$n]=$(median <<<"${CPU[$n]}")
    printf '%-18s %12.0f %10.2f %14.2f %10.1f\n' "$n" "${M_RPS[$n]}" "${M_P99[$n]}" "${M_CPU[$n]}" "$(awk -v k="${RSS[$n]}" 'BEGIN{print k/1024}')"
  done
}
ratio() { # ours theirs
  awk -v a="$1" -v b="$2" -v r1="${M_RPS[$1]}" -v r2="${M_RPS[$2]}" -v p1="${M_P99[$1]}" -v p2="${M_P99[$2]}" \
      -v c1="${M_CPU[$1]}" -v c2="${M_CPU[$2]}" \
      'BEGIN { printf "%s/%s: req/s %.2fx   p99 %.2fx   CPU per request %.2fx\n", a, b, r1/r2, p1/p2, c1/c2 }'
}
echo
echo "$CONNECTIONS connections, $ROUNDS rounds of $DURATION (medians), one proxy worker on CPU 0, wrk on CPU 1"
table "HTTP/1.1 keep-alive, plain" "${NAMES[@]}"
for other in "${NAMES[@]:1}"; do ratio gateway "$other"; done
if [ $HAVE_TLS = 1 ]; then
  table "HTTPS keep-alive (TLS 1.3, HTTP/1.1)" gateway-tls nginx-tls
  ratio gateway-tls nginx-tls
  table "HTTPS, a new connection and full handshake per request" gateway-handshake nginx-handshake
  ratio gateway-handshake nginx-handshake
fi
