#!/usr/bin/env bash
# Side-by-side: the gateway, nginx and HAProxy, one worker each, proxying the same fast
# backend (nginx `return 200`), driven by wrk from this machine in alternating rounds.
# Prints req/s, p99 latency, proxy CPU microseconds per request and proxy RSS, with the
# gateway's ratios against each. Then a memory table: RSS growth of each proxy's worker
# per idle HTTP/1.1, TLS and HTTP/2 connection and per slow reader, and what it still
# holds 10 s after a burst of idle clients left (examples/memprobe.rs is the client); each
# memory row starts from a freshly started proxy.
# Everything stays on 127.0.0.1.
#
# Knobs (environment): ROUNDS (3), DURATION (10s), CONNECTIONS (50), THREADS (1),
# KEEPALIVE (idle upstream connections, at least CONNECTIONS), OPEN_RATE (5000
# requests/s of the open-loop row) and OPEN_SECONDS (10),
# IDLE (8000 idle HTTP/1.1 clients), TLS_IDLE (3000), SLOW (300 slow readers),
# MEMORY_ONLY=1 (skip the throughput rounds), HS_SECONDS (8) and HS_CONCURRENCY (32) of
# the handshake rows, H2_SECONDS (10) of the h2load rows.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
OPEN_RATE=${OPEN_RATE:-5000}
OPEN_SECONDS=${OPEN_SECONDS:-10}
IDLE=${IDLE:-8000}
TLS_IDLE=${TLS_IDLE:-3000}
SLOW=${SLOW:-300}
HS_SECONDS=${HS_SECONDS:-8}
HS_CONCURRENCY=${HS_CONCURRENCY:-32}
H2_SECONDS=${H2_SECONDS:-10}
# Idle upstream connections nginx and the gateway keep (HAProxy's pool has no cap): at
# least CONNECTIONS, so that no proxy opens and closes upstream connections in every round
# (with 32 under 50 clients, about 4 % of the gateway's requests did, 8 syscalls and a TCP
# handshake each).
KEEPALIVE=${KEEPALIVE:-$(( CONNECTIONS > 32 ? CONNECTIONS : 32 ))}
BACKEND_PORT=${BACKEND_PORT:-18080}
GATEWAY_PORT=18081
NGINX_PORT=18082
HAPROXY_PORT=18083
GATEWAY_TLS_PORT=18084
NGINX_TLS_PORT=18085
HAPROXY_TLS_PORT=18086
GATEWAY_RSA_PORT=18087
NGINX_RSA_PORT=18088

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

HAVE_H2LOAD=1
install_if_missing h2load nghttp2-client || { HAVE_H2LOAD=0; echo "h2load not installable: the HTTP/2 rows are skipped" >&2; }

# Connection tracking (loaded by Docker's or a firewall's NAT rules) adds kernel work to
# every loopback connection of every proxy, which moves the CPU figures: said, not changed.
if [ -r /proc/sys/net/netfilter/nf_conntrack_count ] &&
  ! iptables -t raw -S OUTPUT 2>/dev/null | grep -q -- '-o lo -j NOTRACK'; then
  echo "note: the kernel tracks loopback connections (nf_conntrack); compare runs made without it" \
    "only after: iptables -t raw -A OUTPUT -o lo -j NOTRACK; iptables -t raw -A PREROUTING -i lo -j NOTRACK" >&2
fi

[ -x target/release/gateway ] && [ -x target/release/examples/memprobe ] &&
  [ -x target/release/examples/loadgen ] && [ -x target/release/examples/handshakes ] ||
  cargo build --release --bin gateway --example memprobe --example loadgen --example handshakes
WORK=$(mktemp -d)
# nginx's workers run as an unprivileged user: the backend's files must be readable to it
# (mktemp makes the directory 0700, and /big was then a 403).
chmod 755 "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT

mkdir -p "$WORK"/{backend,nginx,logs}
HAVE_TLS=0
if command -v openssl >/dev/null 2>&1 &&
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -keyout "$WORK/site.key" -out "$WORK/site.crt" -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE >/dev/null 2>&1; then
  HAVE_TLS=1
  cat "$WORK/site.crt" "$WORK/site.key" > "$WORK/site.pem"
  # RSA 2048 beside ECDSA P-256 for the handshake rows (the server's signature is most of
  # an RSA handshake's cost).
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 \
    -keyout "$WORK/rsa.key" -out "$WORK/rsa.crt" -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE >/dev/null 2>&1
else
  echo "openssl not available: TLS rows skipped" >&2
fi
NGINX_TLS_SERVER=""
GATEWAY_TLS_LISTENER=""
if [ $HAVE_TLS = 1 ]; then
  nginx_tls_server() { # port cert key [http2]: a server block proxying to the app
    echo "server {
    listen 127.0.0.1:$1 ssl ${4:-};
    ssl_certificate $2;
    ssl_certificate_key $3;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP \$remote_addr;
    }
  }"
  }
  NGINX_TLS_SERVER="$(nginx_tls_server "$NGINX_TLS_PORT" "$WORK/site.crt" "$WORK/site.key" http2)
  $(nginx_tls_server "$NGINX_RSA_PORT" "$WORK/rsa.crt" "$WORK/rsa.key")"
  GATEWAY_TLS_LISTENER="[[listener]]
listen = \"127.0.0.1:$GATEWAY_TLS_PORT\"
tls = [ { cert = \"$WORK/site.crt\", key = \"$WORK/site.key\" } ]
[[listener]]
listen = \"127.0.0.1:$GATEWAY_RSA_PORT\"
tls = [ { cert = \"$WORK/rsa.crt\", key = \"$WORK/rsa.key\" } ]"
fi
# 16 MiB: more than the kernel buffers on the proxy's side of a slow client's connection
# (tcp_wmem's 4 MiB), so what the proxy itself holds for a slow reader shows in its RSS.
head -c 16777216 /dev/zero > "$WORK/backend/big"
cat > "$WORK/backend/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/logs/backend.err warn;
events { worker_connections 16000; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$BACKEND_PORT;
    location / { return 200 "ok\n"; }
    location = /big { alias $WORK/backend/big; }
  }
}
CONF
mkdir -p "$WORK/nginx/tmp"
cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/logs/nginx.err warn;
events { worker_connections 16000; }
http {
  access_log off;
  keepalive_requests 1000000;
  proxy_temp_path $WORK/nginx/tmp;
  proxy_max_temp_file_size 0;   # slow readers: buffer in memory and hold the upstream back
  client_body_temp_path $WORK/nginx/tmp;
  upstream app { server 127.0.0.1:$BACKEND_PORT; keepalive $KEEPALIVE; }
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
  maxconn 9000
defaults
  maxconn 9000
  mode http
  timeout connect 3s
  timeout client 60s
  timeout server 60s
  option forwardfor
frontend f
  bind 127.0.0.1:$HAPROXY_PORT
  $( [ $HAVE_TLS = 1 ] && echo "bind 127.0.0.1:$HAPROXY_TLS_PORT ssl crt $WORK/site.pem alpn h2,http/1.1" )
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:$BACKEND_PORT
CONF
cat > "$WORK/gateway.toml" <<CONF
[gateway]
workers = 1
access_log = "off"
header_read_timeout = "60s"     # idle keep-alive as long as nginx's and HAProxy's
control_socket = "$WORK/gateway.sock"
[[listener]]
listen = "127.0.0.1:$GATEWAY_PORT"
$GATEWAY_TLS_LISTENER
[[route]]
upstream = "app"
[upstream.app]
servers = [ { address = "127.0.0.1:$BACKEND_PORT" } ]
keepalive = $KEEPALIVE
CONF

# The proxies run on CPU 0; wrk and the backend share CPU 1 (same for every proxy).
# (taskset execs the command, so $! is the server's own pid.)
CPU0=(); CPU1=()
if command -v taskset >/dev/null 2>&1; then CPU0=(taskset -c 0); CPU1=(taskset -c 1); fi
"${CPU1[@]}" nginx -c "$WORK/backend/nginx.conf" >/dev/null 2>&1 & PIDS+=($!)
# Each proxy can be (re)started on its own: the memory rows each start from a fresh process,
# since memory a process freed but kept (nginx and HAProxy keep theirs, the gateway gives
# it back) would otherwise hide the next row's growth.
declare -A PROXY_PID PROXY_TOP
start_proxy() { # name: starts it and records its worker's pid in PROXY_PID
  local top
  case $1 in
    gateway) "${CPU0[@]}" target/release/gateway -c "$WORK/gateway.toml" >/dev/null 2>>"$WORK/logs/gateway.err" & top=$! ;;
    nginx) "${CPU0[@]}" nginx -c "$WORK/nginx/nginx.conf" >/dev/null 2>&1 & top=$! ;;
    haproxy) "${CPU0[@]}" haproxy -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 & top=$! ;;
  esac
  PIDS+=("$top"); PROXY_TOP[$1]=$top
  for _ in $(seq 1 50); do
    sleep 0.1
    # The gateway's and nginx's workers are children of the process started; HAProxy -db
    # is one process.
    case $1 in
      haproxy) PROXY_PID[$1]=$top ;;
      *) PROXY_PID[$1]=$(pgrep -P "$top" | head -1) ;;
    esac
    [ -n "${PROXY_PID[$1]}" ] && curl -sf -o /dev/null "http://127.0.0.1:${OPEN_PORT[$1]}/" && return 0
  done
  echo "$1 did not start" >&2; cat "$WORK"/logs/* >&2; exit 1
}
stop_proxy() { # name
  local top=${PROXY_TOP[$1]}
  # A second TERM: the gateway stops at once instead of draining.
  kill -TERM "$top" 2>/dev/null || true; kill -TERM "$top" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$top" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$top" 2>/dev/null || true
  wait "$top" 2>/dev/null || true
}
NAMES=(gateway nginx)
[ $HAVE_HAPROXY = 1 ] && NAMES+=(haproxy)
declare -A OPEN_PORT=([gateway]=$GATEWAY_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT)
declare -A PROXY_TLS_PORT=([gateway]=$GATEWAY_TLS_PORT [nginx]=$NGINX_TLS_PORT [haproxy]=$HAPROXY_TLS_PORT)
declare -A PROXY_RSA_PORT=([gateway]=$GATEWAY_RSA_PORT [nginx]=$NGINX_RSA_PORT)
sleep 0.5
for n in "${NAMES[@]}"; do start_proxy "$n"; done
GATEWAY_WORKER_PID=${PROXY_PID[gateway]}; NGINX_PID=${PROXY_PID[nginx]}; HAPROXY_PID=${PROXY_PID[haproxy]:-}

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

# A handshake row: examples/handshakes on CPU 1 opening new TLS connections (one request
# each) for HS_SECONDS; the proxy worker's CPU per handshake is the figure, with the share
# of a core it used (under 100 %: the client was what limited the rate).
declare -A HS_RATE HS_P99 HS_CPU HS_BUSY HS_RESUMED
run_hs() { # key port pid full|resumed
  local before after t0 t1 out rate p99 resumed errors total
  before=$(cpu_ticks "$3"); t0=$(date +%s.%N)
  out=$("${CPU1[@]}" target/release/examples/handshakes "$2" "$HS_SECONDS" "$HS_CONCURRENCY" "$4")
  t1=$(date +%s.%N); after=$(cpu_ticks "$3")
  read -r rate _ p99 resumed errors total <<<"$out"
  [ "$errors" != 0 ] && echo "  $1: $errors errors" >&2
  HS_RATE[$1]="${HS_RATE[$1]:-} $rate"; HS_P99[$1]="${HS_P99[$1]:-} $p99"
  HS_CPU[$1]="${HS_CPU[$1]:-} $(awk -v t=$((after - before)) -v hz="$TICK" -v n="$total" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')"
  HS_BUSY[$1]="${HS_BUSY[$1]:-} $(awk -v t=$((after - before)) -v hz="$TICK" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", t / hz / (b - a) * 100}')"
  HS_RESUMED[$1]=$resumed
  echo "  round $round $1: $rate handshakes/s, resumed share $resumed" >&2
}

# An HTTP/2 row: h2load on CPU 1 over TLS (ECDSA), CLIENTS connections with STREAMS
# concurrent streams each, for H2_SECONDS; req/s and the worker's CPU per request.
declare -A H2_RPS H2_CPU
run_h2() { # key port pid clients streams
  local before after out rps done
  before=$(cpu_ticks "$3")
  out=$("${CPU1[@]}" h2load -t1 -c"$4" -m"$5" -D "$H2_SECONDS" "https://localhost:$2/" 2>&1)
  after=$(cpu_ticks "$3")
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
  done=$(awk '/^requests:/ {print $8}' <<<"$out")
  grep -q ' 0 failed, 0 errored' <<<"$out" || echo "  $1: $(grep '^requests:' <<<"$out")" >&2
  H2_RPS[$1]="${H2_RPS[$1]:-} $rps"
  H2_CPU[$1]="${H2_CPU[$1]:-} $(awk -v t=$((after - before)) -v hz="$TICK" -v n="$done" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')"
  echo "  round $round $1: $rps req/s" >&2
}

echo "warming up ..." >&2
for port in $GATEWAY_PORT $NGINX_PORT; do wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/" >/dev/null; done
[ "${MEMORY_ONLY:-0}" = 1 ] && ROUNDS=0
# rotated NAMES for round $1: each round starts with another proxy, as the first run of a
# round comes right after the previous round's handshake rows (thousands of connections
# still closing), and is often the slowest: the gateway, always first before this, read
# about 1.13x the CPU per request it read in alternating runs of its own.
rotated() { local n=${#NAMES[@]} i; for i in $(seq 0 $((n - 1))); do echo "${NAMES[$(( (i + $1 - 1) % n ))]}"; done; }
declare -A PLAIN_PID=([gateway]=$GATEWAY_WORKER_PID [nginx]=$NGINX_PID [haproxy]=$HAPROXY_PID)
for round in $(seq 1 "$ROUNDS"); do
  for n in $(rotated "$round"); do
    run_one "$n" "http://127.0.0.1:${OPEN_PORT[$n]}/" "${PLAIN_PID[$n]}"
  done
  if [ $HAVE_TLS = 1 ]; then
    tls_pair=(gateway nginx); (( round % 2 )) || tls_pair=(nginx gateway)
    for n in "${tls_pair[@]}"; do
      run_one "$n-tls" "https://localhost:${PROXY_TLS_PORT[$n]}/" "${PLAIN_PID[$n]}"
    done
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
if [ "$ROUNDS" -gt 0 ]; then
echo
echo "$CONNECTIONS connections, $ROUNDS rounds of $DURATION (medians), one proxy worker on CPU 0, wrk on CPU 1"
table "HTTP/1.1 keep-alive, plain" "${NAMES[@]}"
for other in "${NAMES[@]:1}"; do ratio gateway "$other"; done
if [ $HAVE_TLS = 1 ]; then
  table "HTTPS keep-alive (TLS 1.3, HTTP/1.1)" gateway-tls nginx-tls
  ratio gateway-tls nginx-tls
fi

# The same fixed offered load for each (open loop, examples/loadgen.rs on CPU 1): latency
# at equal load, which a closed-loop wrk run cannot show. ROUNDS alternating rounds after
# a pause (the handshake rounds leave thousands of closing connections behind), medians:
# one round catches a passing stall of the machine as readily as one of the proxy.
sleep 5
declare -A OPEN_P50 OPEN_P99 OPEN_P999 OPEN_ERR
for round in $(seq 1 "$ROUNDS"); do
  for n in $(rotated "$round"); do
    read -r p50 p99 p999 errors _ <<<"$("${CPU1[@]}" target/release/examples/loadgen "http://127.0.0.1:${OPEN_PORT[$n]}/" "$OPEN_RATE" "$OPEN_SECONDS")"
    OPEN_P50[$n]="${OPEN_P50[$n]:-} $p50"; OPEN_P99[$n]="${OPEN_P99[$n]:-} $p99"
    OPEN_P999[$n]="${OPEN_P999[$n]:-} $p999"; OPEN_ERR[$n]=$(( ${OPEN_ERR[$n]:-0} + errors ))
    echo "  open loop round $round $n: p99 $p99 ms" >&2
  done
done
echo
echo "Open loop: $OPEN_RATE requests/s, $ROUNDS rounds of $OPEN_SECONDS s each (medians; latency from the scheduled start)"
printf '%-12s %9s %9s %10s %8s\n' proxy "p50 ms" "p99 ms" "p99.9 ms" errors
for n in "${NAMES[@]}"; do
  OPEN_P50[$n]=$(median <<<"${OPEN_P50[$n]}"); OPEN_P99[$n]=$(median <<<"${OPEN_P99[$n]}")
  OPEN_P999[$n]=$(median <<<"${OPEN_P999[$n]}")
  printf '%-12s %9s %9s %10s %8s\n' "$n" "${OPEN_P50[$n]}" "${OPEN_P99[$n]}" "${OPEN_P999[$n]}" "${OPEN_ERR[$n]}"
done
for other in "${NAMES[@]:1}"; do
  awk -v a="${OPEN_P99[gateway]}" -v b="${OPEN_P99[$other]}" -v o="$other" 'BEGIN { printf "gateway/%s: open-loop p99 %.2fx\n", o, a / b }'
done

# HTTP/2 and new-connection rows last: the handshake rows leave tens of thousands of
# connections in TIME_WAIT, which the rows above should not run beside.
if [ $HAVE_TLS = 1 ]; then
  for round in $(seq 1 "$ROUNDS"); do
    tls_pair=(gateway nginx); (( round % 2 )) || tls_pair=(nginx gateway)
    if [ $HAVE_H2LOAD = 1 ]; then
      for n in "${tls_pair[@]}"; do
        run_h2 "$n-c16m10" "${PROXY_TLS_PORT[$n]}" "${PLAIN_PID[$n]}" 16 10
        run_h2 "$n-c100m1" "${PROXY_TLS_PORT[$n]}" "${PLAIN_PID[$n]}" 100 1
      done
    fi
    for n in "${tls_pair[@]}"; do
      for mode in full resumed; do
        run_hs "$n-$mode-ecdsa" "${PROXY_TLS_PORT[$n]}" "${PLAIN_PID[$n]}" "$mode"
        run_hs "$n-$mode-rsa" "${PROXY_RSA_PORT[$n]}" "${PLAIN_PID[$n]}" "$mode"
      done
    done
  done
  echo
  echo "TLS 1.3 handshakes: a new connection per request, $HS_CONCURRENCY clients (examples/handshakes"
  echo "on CPU 1, checking no signature); full: no resumption offered; resumed: tickets (medians)"
  printf '%-26s %14s %12s %10s %10s %9s\n' proxy "CPU us/hs" "hs/s" "p99 ms" "worker %" resumed
  hs_row() { # key
    printf '%-26s %14s %12s %10s %10s %9s\n' "$1" "$(median <<<"${HS_CPU[$1]}")" "$(median <<<"${HS_RATE[$1]}")" \
      "$(median <<<"${HS_P99[$1]}")" "$(median <<<"${HS_BUSY[$1]}")" "${HS_RESUMED[$1]}"
  }
  for kind in full-ecdsa full-rsa resumed-ecdsa resumed-rsa; do hs_row "gateway-$kind"; hs_row "nginx-$kind"; done
  for kind in full-ecdsa full-rsa resumed-ecdsa resumed-rsa; do
    awk -v k="$kind" -v c1="$(median <<<"${HS_CPU[gateway-$kind]}")" -v c2="$(median <<<"${HS_CPU[nginx-$kind]}")" \
      -v r1="$(median <<<"${HS_RATE[gateway-$kind]}")" -v r2="$(median <<<"${HS_RATE[nginx-$kind]}")" \
      'BEGIN { printf "gateway/nginx %-14s CPU per handshake %.2fx   handshakes/s %.2fx\n", k ":", c1 / c2, r1 / r2 }'
  done
  if [ $HAVE_H2LOAD = 1 ]; then
    echo
    echo "HTTP/2 over TLS (h2load -t1 on CPU 1, ECDSA), $H2_SECONDS s rounds (medians)"
    printf '%-22s %12s %14s\n' proxy "req/s" "CPU us/req"
    for key in gateway-c16m10 nginx-c16m10 gateway-c100m1 nginx-c100m1; do
      printf '%-22s %12s %14s\n' "$key" "$(median <<<"${H2_RPS[$key]}")" "$(median <<<"${H2_CPU[$key]}")"
    done
    for load in c16m10 c100m1; do
      awk -v l="$load" -v r1="$(median <<<"${H2_RPS[gateway-$load]}")" -v r2="$(median <<<"${H2_RPS[nginx-$load]}")" \
        -v c1="$(median <<<"${H2_CPU[gateway-$load]}")" -v c2="$(median <<<"${H2_CPU[nginx-$load]}")" \
        'BEGIN { printf "gateway/nginx h2 %-7s req/s %.2fx   CPU per request %.2fx\n", l ":", r1 / r2, c1 / c2 }'
    done
  fi
fi
fi

# --- Memory --------------------------------------------------------------------------
# Each row: RSS of the proxy's worker before and while COUNT clients hold their
# connections (memprobe: one request each, then idle; or slow readers of a 16 MiB body),
# each on a freshly started proxy.
declare -A MEM TCP_PAGES
hold() { # name mode port count [ca]
  local fifo="$WORK/hold-$1-$2" before after out="$WORK/probe-$1-$2.out" pid
  stop_proxy "$1"; start_proxy "$1"; pid=${PROXY_PID[$1]}
  mkfifo "$fifo"
  sleep 2
  before=$(rss_kib "$pid")
  target/release/examples/memprobe "$2" "127.0.0.1:$3" "$4" ${5:+"$5"} <"$fifo" >"$out" 2>&1 &
  local probe=$!
  exec 9>"$fifo"
  for _ in $(seq 1 600); do grep -q ready "$out" 2>/dev/null && break; sleep 0.1; done
  # Slow readers take a few seconds to fill every buffer on their way (the kernel's
  # first): measured once that has settled.
  if [ "$2" = slow ]; then sleep 10; else sleep 1; fi
  after=$(rss_kib "$pid")
  # Kernel TCP memory (pages) while the slow readers hold on: see the note under the table.
  [ "$2" = slow ] && TCP_PAGES[$1]=$(awk '/^TCP:/ {print $NF}' /proc/net/sockstat 2>/dev/null)
  exec 9>&-
  wait "$probe" || true
  grep -v ready "$out" >&2 || true
  MEM[$1-$2]=$(awk -v a="$after" -v b="$before" -v n="$4" 'BEGIN {printf "%.2f", (a - b) * 1024 / n / 1024}')
  echo "  memory $1 $2: ${MEM[$1-$2]} KiB per connection" >&2
  BEFORE=$before
}

echo "measuring memory ..." >&2
declare -A PROXY_PORT=([gateway]=$GATEWAY_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT)
declare -A BURST
for n in "${NAMES[@]}"; do
  hold "$n" idle "${PROXY_PORT[$n]}" "$IDLE"
  # What the burst of idle clients left behind, 10 s after they closed.
  sleep 10
  BURST[$n]=$(awk -v a="$(rss_kib "${PROXY_PID[$n]}")" -v b="$BEFORE" 'BEGIN {printf "%.1f", (a - b) / 1024}')
  hold "$n" slow "${PROXY_PORT[$n]}" "$SLOW"
  if [ $HAVE_TLS = 1 ]; then
    hold "$n" idle-tls "${PROXY_TLS_PORT[$n]}" "$TLS_IDLE" "$WORK/site.crt"
    hold "$n" idle-h2 "${PROXY_TLS_PORT[$n]}" "$TLS_IDLE" "$WORK/site.crt"
  fi
done

echo
echo "Memory: RSS growth of the proxy worker (KiB per client), one worker each"
printf '%-52s' ""; for n in "${NAMES[@]}"; do printf '%10s' "$n"; done
for other in "${NAMES[@]:1}"; do printf '%14s' "gw/$other"; done; echo
mem_row() { # label key-suffix [unit]
  printf '%-52s' "$1"
  for n in "${NAMES[@]}"; do printf '%10s' "${MEM[$n-$2]:--}"; done
  for other in "${NAMES[@]:1}"; do
    awk -v a="${MEM[gateway-$2]:-0}" -v b="${MEM[$other-$2]:-0}" 'BEGIN { if (b > 0) printf "%13.2fx", a / b; else printf "%14s", "-" }'
  done
  echo
}
mem_row "idle HTTP/1.1 keep-alive ($IDLE clients)" idle
if [ $HAVE_TLS = 1 ]; then
  mem_row "idle TLS 1.3, HTTP/1.1 ($TLS_IDLE clients)" idle-tls
  mem_row "idle HTTP/2 over TLS ($TLS_IDLE clients)" idle-h2
fi
mem_row "slow reader of a 16 MiB response ($SLOW clients)" slow
printf '%-52s' "MiB still held 10 s after the $IDLE idle clients left"
for n in "${NAMES[@]}"; do printf '%10s' "${BURST[$n]}"; done; echo
# A slow reader's body waits in kernel socket buffers first (autotuned up to tcp_wmem and
# tcp_rmem's maxima); a proxy holds it in its own memory only once those are full or the
# kernel is under TCP memory pressure. Below pressure the slow-reader row can read near 0
# for every proxy: it compares proxies only when the kernel was past its pressure mark.
pressure=$(awk '{print $2}' /proc/sys/net/ipv4/tcp_mem 2>/dev/null)
printf 'kernel TCP memory during the slow-reader rows (pages; pressure at %s):' "${pressure:-?}"
for n in "${NAMES[@]}"; do printf ' %s %s' "$n" "${TCP_PAGES[$n]:-?}"; done; echo
