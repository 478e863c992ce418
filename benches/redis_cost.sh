#!/usr/bin/env bash
# Server CPU cost per command of `ferry serve --redis` (epoll, uring) and redis-server under
# redis-benchmark -t set,get -c 50 (-P 16 and unpipelined), alternating servers each round.
#
# Unlike scripts/bench redis (busy jiffies of the whole server core), the cost here is the
# server process's own CPU time (utime + stime from /proc/PID/stat, in clock ticks), so other
# load on the machine does not count against the server.
#
# Usage: benches/redis_cost.sh FERRY_BINARY [ROUNDS] [N_PIPELINED] [N_SINGLE]
# Environment: FERRY_SERVER_CORE (default 0), FERRY_CLIENT_CORE (default 1),
# SERVERS (default "epoll uring redis").
set -euo pipefail
ferry=${1:?usage: redis_cost.sh FERRY_BINARY [ROUNDS] [N_PIPELINED] [N_SINGLE]}
rounds=${2:-2}
np=${3:-1000000}
n1=${4:-200000}
score=${FERRY_SERVER_CORE:-0}
ccore=${FERRY_CLIENT_CORE:-1}
servers=${SERVERS:-epoll uring redis}
tick=$(getconf CLK_TCK)

pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cpu_ticks() { # PID: utime + stime
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}

start() { # KIND PORT
  case $1 in
    redis) taskset -c "$score" redis-server --port "$2" --save '' --appendonly no >/dev/null 2>&1 & ;;
    *) taskset -c "$score" "$ferry" serve --redis "127.0.0.1:$2" --workers 1 --driver "$1" >/dev/null 2>&1 & ;;
  esac
  pid=$!
  for _ in $(seq 100); do
    redis-cli -p "$2" ping >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "server $1 did not start" >&2
  exit 1
}

for round in $(seq "$rounds"); do
  for s in $servers; do
    port=$(free_port)
    start "$s" "$port"
    for args in "-n $np -P 16" "-n $n1"; do
      c0=$(cpu_ticks "$pid")
      # shellcheck disable=SC2086
      out=$(taskset -c "$ccore" redis-benchmark -p "$port" -t set,get -c 50 -q $args 2>&1 |
        tr '\r' '\n' | grep 'requests per second' | awk '{printf "%s %s ", $1, $2}')
      c1=$(cpu_ticks "$pid")
      n=$(echo "$args" | awk '{print $2}')
      awk -v l="r$round $s $args" -v t=$((c1 - c0)) -v n=$((n * 2)) -v hz="$tick" -v o="$out" \
        'BEGIN { printf "%-28s %-40s %.3f us/op (server process CPU)\n", l, o, t * 1e6 / hz / n }'
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
  done
done
