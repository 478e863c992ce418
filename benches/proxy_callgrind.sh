#!/usr/bin/env bash
# User-space instructions per request of `ferry proxy` (one worker), counted by callgrind:
# repeatable to ~0.5% on this VM, where wall-clock figures drift ±20% with the host.
#
#   benches/proxy_callgrind.sh FERRY_BINARY http|redis [N]
#
# http:  an nginx `return 200` upstream, `ferry bench -c16 -n N` as the client (N=30000).
# redis: a redis-server upstream, `redis-benchmark -t set,get -c 50 -P 16 -n N` (N=50000).
# Prints callgrind's PROGRAM TOTALS and that divided by requests (startup, about 1M
# instructions, included). Environment: DRIVER (epoll|uring, default epoll), BASE (port base,
# default 19100: the proxy listens on BASE, the upstream on BASE+1), OUT (callgrind file),
# EXTRA (more proxy arguments).
set -euo pipefail
F=${1:?usage: proxy_callgrind.sh FERRY_BINARY http|redis [N]}
proto=${2:?usage: proxy_callgrind.sh FERRY_BINARY http|redis [N]}
BASE=${BASE:-19100}; DRIVER=${DRIVER:-epoll}
OUT=${OUT:-/tmp/callgrind.proxy-$proto-$DRIVER.out}
D=$(mktemp -d /tmp/proxycg.XXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT

case $proto in
  http)
    N=${3:-30000}; requests=$N
    cat >"$D/nginx.conf" <<NG
worker_processes 1;
daemon off;
pid $D/nginx.pid;
error_log $D/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $D/body; proxy_temp_path $D/proxy; fastcgi_temp_path $D/fcgi; uwsgi_temp_path $D/uwsgi; scgi_temp_path $D/scgi;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$((BASE + 1)); location / { return 200 "hello world\n"; } }
}
NG
    /usr/sbin/nginx -c "$D/nginx.conf" -p "$D" >/dev/null 2>&1 &
    pids+=($!) ;;
  redis)
    N=${3:-50000}; requests=$((2 * N))
    redis-server --port $((BASE + 1)) --save '' --appendonly no >/dev/null 2>&1 &
    pids+=($!) ;;
  *) echo "proto: http or redis" >&2; exit 2 ;;
esac
sleep 0.3
valgrind --tool=callgrind --callgrind-out-file="$OUT" "$F" proxy --protocol "$proto" \
  --listen "127.0.0.1:$BASE" --upstream "127.0.0.1:$((BASE + 1))" --workers 1 \
  --driver "$DRIVER" --health-interval 0 ${EXTRA:-} >/dev/null 2>"$D/valgrind.err" &
px=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$BASE") 2>/dev/null && break; sleep 0.2; done
if [ "$proto" = http ]; then
  "$F" bench "http://127.0.0.1:$BASE/" -c 16 -n "$N" 2>&1 | grep -iE "requests/s|errors" | head -3
else
  redis-benchmark -p "$BASE" -t set,get -c 50 -P 16 -n "$N" -q 2>&1 | tr '\r' '\n' | grep "per second" | tail -2
fi
kill -INT "$px"; sleep 3
if kill -0 "$px" 2>/dev/null; then
  # io_uring under valgrind does not see SIGINT: dump the counts, then stop it.
  callgrind_control -d "$px" >/dev/null 2>&1 || true; sleep 1; kill -9 "$px" 2>/dev/null || true
  [ -f "$OUT.1" ] && mv "$OUT.1" "$OUT"
fi
wait "$px" 2>/dev/null || true
total=$(callgrind_annotate "$OUT" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
echo "callgrind: $OUT"
echo "instructions: $total total, $((total / requests)) per request ($requests requests, driver $DRIVER)"
