#!/usr/bin/env bash
# Static files and compression, side by side with nginx (one worker each), on 127.0.0.1:
# - static files of 10 KiB and 1 MiB, plain and over TLS: requests/s and worker CPU
#   microseconds per request, the gateway's `root` against nginx's `root` with `sendfile on`;
# - compression of a 1 MiB JSON and a 300 KiB JavaScript response from an nginx backend:
#   worker CPU milliseconds per MiB of input and the compression ratio, the gateway's
#   gzip, br and zstd (its default levels) against nginx's gzip at levels 1 and 6;
# - memory per compressing client: RSS growth of each worker while SLOW clients read the
#   compressed JSON 4 KiB a second (examples/memprobe), measured first, on fresh workers.
# wrk drives the throughput rows; rounds alternate between the proxies.
#
# Knobs: ROUNDS (2), DURATION (6s), CONNECTIONS (20), SLOW (1000).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-6s}
CONNECTIONS=${CONNECTIONS:-20}
SLOW=${SLOW:-1000}
export PATH="$PATH:/usr/sbin:/sbin"
for tool in wrk nginx curl python3 openssl; do
  command -v $tool >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
cargo build --release --bin gateway --example memprobe

WORK=$(mktemp -d)
chmod 755 "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK"/{site,backend,nginx/tmp,logs}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -keyout "$WORK/site.key" -out "$WORK/site.crt" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost >/dev/null 2>&1
head -c 10240 /dev/urandom > "$WORK/site/10k.bin"
head -c 1048576 /dev/urandom > "$WORK/site/1m.bin"
# Text that compresses as real JSON and JavaScript do (repetitive keys, varied values).
python3 - "$WORK/backend" <<'PY'
import json, random, sys
random.seed(7)
d = sys.argv[1]
rows = [{"id": i, "name": "user%05d" % i, "email": "user%05d@example.com" % i,
         "active": i % 3 == 0, "score": round(random.random() * 1000, 3),
         "tags": random.sample(["alpha", "beta", "gamma", "delta", "omega"], 2)}
        for i in range(7000)]
data = json.dumps(rows)
open(d + "/data.json", "w").write(data[:1048576])
js = []
for i in range(6000):
    js.append("function handler%d(event) { const value = event.detail.value * %d; if (value > %d) { console.log('large', value); } return value; }\n" % (i, i % 97, i % 1000))
open(d + "/app.js", "w").write("".join(js)[:307200])
PY
chmod -R a+rX "$WORK"

cat > "$WORK/backend/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/backend/nginx.pid; error_log $WORK/logs/backend.err warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  types { application/json json; application/javascript js; }
  server {
    listen 127.0.0.1:18390; root $WORK/backend;
    # For the memory rows: a response that arrives over 30 s keeps every proxy's
    # compressor busy with it while the readers hold on.
    location /slow/ { alias $WORK/backend/; limit_rate 32k; }
  }
}
CONF
nginx -c "$WORK/backend/nginx.conf" & PIDS+=($!)

nginx_conf() { # level
  cat > "$WORK/nginx/nginx-$1.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx/nginx-$1.pid; error_log $WORK/logs/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000; sendfile on; tcp_nopush on;
  proxy_temp_path $WORK/nginx/tmp; client_body_temp_path $WORK/nginx/tmp;
  types { application/octet-stream bin; }
  upstream app { server 127.0.0.1:18390; keepalive 64; }
  gzip on; gzip_comp_level $1; gzip_types application/json application/javascript; gzip_proxied any;
  proxy_max_temp_file_size 0;   # slow readers: buffer in memory and hold the upstream back
  ssl_certificate $WORK/site.crt; ssl_certificate_key $WORK/site.key; ssl_protocols TLSv1.3;
  server {
    listen 127.0.0.1:1839$1;
    listen 127.0.0.1:1840$1 ssl;
    location /static/ { alias $WORK/site/; }
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
}
nginx_conf 1; nginx_conf 6
declare -A PARENT
nginx -c "$WORK/nginx/nginx-1.conf" & PIDS+=($!); PARENT[18391]=$!; PARENT[18401]=$!
nginx -c "$WORK/nginx/nginx-6.conf" & PIDS+=($!); PARENT[18396]=$!; PARENT[18406]=$!

gateway_conf() { # name port algorithm
  cat > "$WORK/$1.toml" <<CONF
[gateway]
workers = 1
control_socket = "$1.sock"
access_log = "off"
[[listener]]
listen = "127.0.0.1:$2"
[[listener]]
listen = "127.0.0.1:$(($2 + 30))"
tls = [ { cert = "$WORK/site.crt", key = "$WORK/site.key" } ]
[compression]
algorithms = ["$3"]
types = ["application/json", "application/javascript"]
[[route]]
path_prefix = "/static/"
root = "$WORK/site"
[[route]]
upstream = "app"
[upstream.app]
keepalive = 64
servers = [ { address = "127.0.0.1:18390" } ]
CONF
  target/release/gateway -c "$WORK/$1.toml" 2>"$WORK/logs/$1.err" & PIDS+=($!); PARENT[$2]=$!; PARENT[$(($2 + 30))]=$!
}
gateway_conf gzip 18381 gzip
gateway_conf br 18382 br
gateway_conf zstd 18383 zstd
sleep 2

# The one worker process serving on a port: the child of the nginx master or of the
# gateway's supervisor.
worker_on() { pgrep -P "${PARENT[$1]}" | head -1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run PORT PATH ACCEPT [SCHEME]: prints "requests cpu_ticks"
run() {
  local w t0 t1 out reqs
  w=$(worker_on "$1")
  t0=$(ticks "$w")
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -H "Accept-Encoding: $3" "${4:-http}://127.0.0.1:$1$2" 2>&1)
  t1=$(ticks "$w")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "$reqs $((t1 - t0))"
}

# Memory first, while every worker is fresh: RSS growth per client while SLOW clients
# read the compressed JSON 4 KiB a second as it arrives from the backend at 32 KiB/s, so
# each proxy holds SLOW compressing streams at once (with a backend at full speed, the
# compressed response fits in the kernel's socket buffers and no proxy holds any).
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
echo "Memory per client of a compressing 1 MiB JSON response ($SLOW slow clients, fresh workers)"
printf "%-32s %14s %18s\n" "row" "KiB per client" "kernel TCP pages"
declare -A MEMROW
for row in "gateway-gzip 18381 gzip" "gateway-br 18382 br" "gateway-zstd 18383 zstd" "nginx-gzip-1 18391 gzip" "nginx-gzip-6 18396 gzip"; do
  set -- $row
  w=$(worker_on "$2")
  fifo="$WORK/hold-$1"; mkfifo "$fifo"
  before=$(rss_kib "$w")
  target/release/examples/memprobe slow "127.0.0.1:$2" "$SLOW" /slow/data.json "$3" <"$fifo" >"$WORK/probe-$1.out" 2>&1 &
  probe=$!
  exec 9>"$fifo"
  for _ in $(seq 1 600); do grep -q ready "$WORK/probe-$1.out" 2>/dev/null && break; sleep 0.1; done
  sleep 10
  after=$(rss_kib "$w"); pages=$(awk '/^TCP:/ {print $NF}' /proc/net/sockstat)
  exec 9>&-
  wait "$probe" || true
  grep -v ready "$WORK/probe-$1.out" >&2 || true
  MEMROW[$1]=$(awk -v a="$after" -v b="$before" -v n="$SLOW" 'BEGIN {printf "%.1f", (a - b) / n}')
  printf "%-32s %14s %18s\n" "$1" "${MEMROW[$1]}" "$pages"
  sleep 3
done
for g in gateway-gzip gateway-br gateway-zstd; do
  printf "  %s/nginx-gzip-1: %s   /nginx-gzip-6: %s\n" "$g" \
    "$(awk -v a="${MEMROW[$g]}" -v b="${MEMROW[nginx-gzip-1]}" 'BEGIN {printf (b > 0 ? "%.2fx" : "-"), a / b}')" \
    "$(awk -v a="${MEMROW[$g]}" -v b="${MEMROW[nginx-gzip-6]}" 'BEGIN {printf (b > 0 ? "%.2fx" : "-"), a / b}')"
done
echo

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "Static files, HTTP/1.1 keep-alive, $CONNECTIONS connections, $ROUNDS rounds of $DURATION (medians)"
printf "%-28s %10s %12s\n" "row" "req/s" "CPU us/req"
secs=${DURATION%s}
for scheme in http https; do
for file in 10k.bin 1m.bin; do
  declare -A RPS CPU
  for who in gateway nginx; do RPS[$who]=""; CPU[$who]=""; done
  for r in $(seq 1 "$ROUNDS"); do
    for who in gateway nginx; do
      if [ $scheme = http ]; then port=$([ $who = gateway ] && echo 18381 || echo 18391)
      else port=$([ $who = gateway ] && echo 18411 || echo 18401); fi
      read -r reqs t < <(run $port "/static/$file" identity $scheme)
      RPS[$who]+="$((reqs / secs)) "
      CPU[$who]+="$(python3 -c "print($t * 10000 / max($reqs, 1))") "
    done
  done
  for who in gateway nginx; do
    rps=$(echo ${RPS[$who]} | tr ' ' '\n' | median)
    cpu=$(echo ${CPU[$who]} | tr ' ' '\n' | median)
    printf "%-28s %10s %12.1f\n" "$who $file $scheme" "$rps" "$cpu"
    eval "MED_${who}_${file//./_}=$cpu"
  done
  g=$(eval echo \$MED_gateway_${file//./_}); n=$(eval echo \$MED_nginx_${file//./_})
  echo "  gateway/nginx CPU per request, $file $scheme: $(python3 -c "print(f'{$g/$n:.2f}x')")"
done
done

echo
echo "Compression of upstream responses: CPU ms per MiB of input, and compressed/original size"
printf "%-32s %10s %12s\n" "row" "ms/MiB" "size ratio"
for doc in data.json app.js; do
  size=$(stat -c %s "$WORK/backend/$doc")
  for row in "gateway-gzip 18381 gzip" "gateway-br 18382 br" "gateway-zstd 18383 zstd" "nginx-gzip-1 18391 gzip" "nginx-gzip-6 18396 gzip"; do
    set -- $row
    out_size=$(curl -s -H "Accept-Encoding: $3" "http://127.0.0.1:$2/$doc" -o "$WORK/out" -w '%{size_download}')
    enc=$(curl -s -D - -o /dev/null -H "Accept-Encoding: $3" "http://127.0.0.1:$2/$doc" | awk -F': ' 'tolower($1)=="content-encoding" {print $2}' | tr -d '\r')
    vals=""
    for r in $(seq 1 "$ROUNDS"); do
      read -r reqs t < <(run "$2" "/$doc" "$3")
      vals+="$(python3 -c "print($t * 10 / max($reqs * $size / 1048576, 1e-9))") "
    done
    ms=$(echo $vals | tr ' ' '\n' | median)
    printf "%-32s %10.2f %12.3f  (%s)\n" "$1 $doc" "$ms" "$(python3 -c "print($out_size / $size)")" "${enc:-identity}"
  done
done
