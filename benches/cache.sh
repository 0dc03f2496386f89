#!/usr/bin/env bash
# The response cache, side by side with nginx's proxy_cache (one worker each, the cache
# on the same disk), on 127.0.0.1:
# - cache hits of a 2 KiB and a 200 KiB response, plain HTTP/1.1 keep-alive: requests/s
#   and worker CPU microseconds per request (wrk, rounds alternating between proxies);
# - 100 concurrent misses of one slow URL (the origin takes 500 ms): the time until all
#   are answered, and how many requests reached the origin (nginx: proxy_cache_lock on).
#
# Knobs: ROUNDS (2), DURATION (6s), CONNECTIONS (20).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-6s}
CONNECTIONS=${CONNECTIONS:-20}
export PATH="$PATH:/usr/sbin:/sbin"
for tool in wrk nginx curl python3; do
  command -v $tool >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
cargo build --release --bin gateway

WORK=$(mktemp -d)
chmod 755 "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK"/{origin,nginx/tmp,nginx/cache,logs}
head -c 2048 /dev/urandom > "$WORK/origin/2k.bin"
head -c 204800 /dev/urandom > "$WORK/origin/200k.bin"

# The origin: files with a day of freshness; /slow/* answers after 500 ms and counts.
cat > "$WORK/origin.py" <<'PY'
import http.server, socketserver, sys, time, threading, os
root = sys.argv[1]; count = {}; lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path.startswith("/count/"):
            body = str(count.get(self.path[6:], 0)).encode()
        elif self.path.startswith("/slow/"):
            with lock: count[self.path[5:]] = count.get(self.path[5:], 0) + 1
            time.sleep(0.5); body = b"s" * 4096
        else:
            body = open(os.path.join(root, self.path.lstrip("/")), "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=86400")
        self.end_headers(); self.wfile.write(body)
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True; request_queue_size = 512
S(("127.0.0.1", 18490), H).serve_forever()
PY
python3 "$WORK/origin.py" "$WORK/origin" & PIDS+=($!)

cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx/nginx.pid; error_log $WORK/logs/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000; sendfile on; tcp_nopush on;
  proxy_temp_path $WORK/nginx/tmp; client_body_temp_path $WORK/nginx/tmp;
  proxy_cache_path $WORK/nginx/cache levels=1:2 keys_zone=c:10m max_size=1g inactive=1d use_temp_path=off;
  upstream app { server 127.0.0.1:18490; keepalive 64; }
  server {
    listen 127.0.0.1:18491;
    location / {
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache c; proxy_cache_lock on; proxy_cache_lock_timeout 5s;
      add_header Cache-Status \$upstream_cache_status;
    }
  }
}
CONF
nginx -c "$WORK/nginx/nginx.conf" & PIDS+=($!)
declare -A PARENT
PARENT[18491]=$!

cat > "$WORK/gateway.toml" <<CONF
[gateway]
workers = 1
control_socket = "gateway.sock"
access_log = "off"
[[listener]]
listen = "127.0.0.1:18481"
[cache]
dir = "$WORK/gateway-cache"
[[route]]
upstream = "app"
cache = { ttl = "1h" }
[upstream.app]
keepalive = 64
servers = [ { address = "127.0.0.1:18490" } ]
CONF
target/release/gateway -c "$WORK/gateway.toml" 2>"$WORK/logs/gateway.err" & PIDS+=($!)
PARENT[18481]=$!
sleep 2

worker_on() { pgrep -P "${PARENT[$1]}" | head -1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # PORT PATH: prints "requests cpu_ticks"
  local w t0 t1 out
  w=$(worker_on "$1"); t0=$(ticks "$w")
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$1$2" 2>&1)
  t1=$(ticks "$w")
  echo "$(echo "$out" | awk '/requests in/ {print $1}') $((t1 - t0))"
}

HZ=$(getconf CLK_TCK)
echo "Cache hits (wrk -c$CONNECTIONS, $DURATION x $ROUNDS rounds, one worker each)"
printf "%-10s %-8s %12s %14s\n" "size" "proxy" "req/s" "CPU us/req"
for size in 2k 200k; do
  for port in 18481 18491; do curl -s -o /dev/null "http://127.0.0.1:$port/$size.bin"; curl -s -o /dev/null "http://127.0.0.1:$port/$size.bin"; done
  declare -A REQS=() TICKS=()
  for r in $(seq "$ROUNDS"); do
    for port in 18481 18491; do
      read -r n t < <(run "$port" "/$size.bin")
      REQS[$port]=$(( ${REQS[$port]:-0} + n )); TICKS[$port]=$(( ${TICKS[$port]:-0} + t ))
    done
  done
  secs=$(( ROUNDS * ${DURATION%s} ))
  declare -A US=()
  for port in 18481 18491; do
    name=$([ "$port" = 18481 ] && echo gateway || echo nginx)
    US[$port]=$(python3 -c "print(${TICKS[$port]} * 1e6 / $HZ / max(1, ${REQS[$port]}))")
    printf "%-10s %-8s %12d %14.1f\n" "$size" "$name" $(( REQS[$port] / secs )) "${US[$port]}"
  done
  python3 -c "print('  %s: req/s %.2fx, CPU per request %.2fx nginx' % ('$size', ${REQS[18481]} / ${REQS[18491]}, ${US[18481]} / ${US[18491]}))"
done

echo
echo "100 concurrent misses of one slow (500 ms) URL"
printf "%-8s %10s %18s\n" "proxy" "seconds" "origin requests"
for port in 18481 18491; do
  name=$([ "$port" = 18481 ] && echo gateway || echo nginx)
  url="http://127.0.0.1:$port/slow/$name"
  start=$(date +%s.%N)
  seq 100 | xargs -P 100 -I{} curl -s -o /dev/null -w '%{http_code}\n' "$url" > "$WORK/codes-$name"
  end=$(date +%s.%N)
  asked=$(curl -s "http://127.0.0.1:18490/count/$name")
  ok=$(grep -c '^200$' "$WORK/codes-$name" || true)
  printf "%-8s %10.2f %18s   (%s of 100 answered 200)\n" "$name" "$(python3 -c "print($end - $start)")" "$asked" "$ok"
done
