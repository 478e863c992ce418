#!/usr/bin/env bash
# User-space instructions per transaction of `ferry proxy --protocol postgres` (one epoll
# worker, transaction pooling), counted by callgrind (see below for how repeatable).
#
#   benches/pg_callgrind.sh FERRY_BINARY [simple|extended|both] [N]
#
# Starts a throwaway PostgreSQL 15 cluster (trust auth, so no SCRAM is counted) on a free
# loopback port, `pgbench -i -s 1` straight to it, then for each protocol runs the proxy under
# `valgrind --tool=callgrind` twice: `pgbench -n -S -c 4 -j 1 -t N/5` and `-t N` (N=5000)
# through it. The difference of the two PROGRAM TOTALS divided by the difference in
# transactions (4 × 4N/5) is the per-transaction figure, free of startup and logins; the
# long run's total divided by its transactions (startup included, as benches/proxy_callgrind.sh
# prints) is shown too. With 4 clients the figure moves by a few per cent from run to run on a
# shared machine (how events batch depends on scheduling); C=1 (one client) repeats to ~0.1%.
# Environment: C (pgbench clients, default 4), FERRY_PG_BIN (default
# /usr/lib/postgresql/15/bin), EXTRA (more proxy arguments), KEEP=1 (keep the callgrind files,
# printed).
set -euo pipefail
F=${1:?usage: pg_callgrind.sh FERRY_BINARY [simple|extended|both] [N]}
WHICH=${2:-simple}; N=${3:-5000}; SHORT=$((N / 5)); C=${C:-4}
PGB=${FERRY_PG_BIN:-/usr/lib/postgresql/15/bin}
case $WHICH in simple) modes=(simple) ;; extended) modes=(extended) ;; both) modes=(simple extended) ;;
  *) echo "protocol: simple, extended or both" >&2; exit 2 ;; esac
for p in postgres initdb pgbench pg_isready; do
  [ -x "$PGB/$p" ] || { echo "needs $PGB/$p (scripts/install-test-deps)" >&2; exit 2; }
done
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 2; }
F=$(realpath "$F")
D=$(mktemp -d /tmp/pgcg.XXXX)
chmod 711 "$D"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$D"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
wait_port() {
  for _ in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done
  return 1
}

# PostgreSQL refuses to run as root: as root it runs as `postgres`.
as_pg=()
if [ "$(id -u)" = 0 ]; then
  as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
  mkdir -p "$D/pg" && chown postgres: "$D/pg"
fi
"${as_pg[@]}" "$PGB/initdb" -D "$D/pg/data" -U postgres -A trust --no-sync >/dev/null
PG=$(free_port)
"${as_pg[@]}" "$PGB/postgres" -D "$D/pg/data" -p "$PG" -k "$D/pg" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c synchronous_commit=off -c max_connections=50 >"$D/pg.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do "$PGB/pg_isready" -q -h 127.0.0.1 -p "$PG" && break; sleep 0.2; done
"$PGB/pg_isready" -q -h 127.0.0.1 -p "$PG" || { echo "postgres did not start:" >&2; cat "$D/pg.log" >&2; exit 1; }
"$PGB/pgbench" -i -s 1 -q -h 127.0.0.1 -p "$PG" -U postgres postgres >/dev/null 2>&1

# run MODE T: the proxy under callgrind, `pgbench -t T` through it; prints PROGRAM TOTALS.
run() {
  local mode=$1 t=$2 port out px total
  port=$(free_port)
  out="$D/callgrind.pg-$mode-$t.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$F" proxy --protocol postgres \
    --listen "127.0.0.1:$port" --upstream "127.0.0.1:$PG" --workers 1 --driver epoll \
    --health-interval 0 --pool-mode transaction ${EXTRA:-} >/dev/null 2>"$D/valgrind-$mode-$t.err" &
  px=$!
  pids+=($px)
  wait_port "$port" || { echo "proxy did not start:" >&2; cat "$D/valgrind-$mode-$t.err" >&2; exit 1; }
  "$PGB/pgbench" -n -S -M "$mode" -c "$C" -j 1 -t "$t" -h 127.0.0.1 -p "$port" -U postgres postgres \
    >"$D/pgbench-$mode-$t.out" 2>&1 || { echo "pgbench failed:" >&2; cat "$D/pgbench-$mode-$t.out" >&2; exit 1; }
  grep -q "number of failed transactions: 0" "$D/pgbench-$mode-$t.out" ||
    { echo "pgbench had failures:" >&2; cat "$D/pgbench-$mode-$t.out" >&2; exit 1; }
  kill -INT "$px"
  wait "$px" 2>/dev/null || true
  total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
  [ -n "$total" ] || { echo "no callgrind totals in $out" >&2; exit 1; }
  [ "${KEEP:-0}" = 1 ] && echo "callgrind: $out" >&2
  echo "$total"
}

for mode in "${modes[@]}"; do
  short=$(run "$mode" "$SHORT")
  long=$(run "$mode" "$N")
  per=$(((long - short) / (C * (N - SHORT))))
  echo "$mode, -c $C: $per instructions per transaction (($long - $short) / ($C x $((N - SHORT)))); $((long / (C * N))) with startup and logins ($long / $((C * N)))"
done
