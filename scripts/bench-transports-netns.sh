#!/usr/bin/env bash
# The `transports` suite of scripts/bench: one table of latency and throughput per transport
# across a veth pair between two network namespaces this script creates (pid-based names) and
# deletes on exit (trap), with addresses only inside them. Needs root.
#
# Usage (scripts/bench transports builds the binaries and calls this):
#   scripts/bench-transports-netns.sh FERRY RAW_BENCH [DURATION_S]
#
# Per transport, the server runs in namespace S pinned to $FERRY_SERVER_CORE (0) and the load in
# namespace C pinned to $FERRY_CLIENT_CORE (1):
#   uring, epoll  ferry serve --driver uring|epoll on S's kernel address (kernel TCP on veth)
#   xdp           ferry serve --driver xdp --iface S-end (AF_XDP copy mode + smoltcp); S's end
#                 carries no kernel address, tx checksum offload off on both ends
#   dpdk          ferry serve --driver dpdk --vdev net_af_packet0,iface=S-end (DPDK's packet
#                 socket PMD + smoltcp); same interface setup as xdp. Needs a `dpdk` build.
#   raw           raw_bench (ferry-raw, AF_PACKET): echo/ping with TPACKET_V2 rings for latency,
#                 sink/flood (TPACKET_V3) for throughput; framed messages, not HTTP
# HTTP cells: `ferry bench -c 1` (p50/p99 of a 1-connection ping-pong) and `ferry bench -c 64`
# (req/s), GET / of the 12-byte hello. CPU cost per request of the -c64 run, as process CPU time
# (utime+stime): the server's (/proc/PID/stat before and after) and the load generator's
# (getrusage of its children), so that other processes on a shared machine do not count; and
# the busy share of both cores from /proc/stat (BENCHMARKING.md's `measure`), which shows how
# contended the machine was. On veth the receive path of a packet (softirq, XDP, the copy into
# the peer) runs on the core that sent it, in the sender's time: only server + client together
# compare across transports.
set -euo pipefail

ferry=${1:?usage: bench-transports-netns.sh FERRY RAW_BENCH [DURATION_S]}
raw_bench=${2:?usage: bench-transports-netns.sh FERRY RAW_BENCH [DURATION_S]}
dur=${3:-3}
sc=${FERRY_SERVER_CORE:-0}
cc=${FERRY_CLIENT_CORE:-1}
[ "$(id -u)" = 0 ] || {
  echo "transports: needs root (network namespaces, AF_PACKET, AF_XDP)" >&2
  exit 1
}
for tool in ip ethtool taskset curl python3; do
  command -v "$tool" >/dev/null || {
    echo "transports: needs $tool" >&2
    exit 1
  }
done

S=fts$$
C=ftc$$
SV=fts${$}v
CV=ftc${$}v
SIP=10.79.0.1
CIP=10.79.0.2
work=$(mktemp -d)
spid=""
tck=$(getconf CLK_TCK)

cleanup() {
  stop_server
  ip netns del "$S" 2>/dev/null || true
  ip netns del "$C" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stop_server() {
  [ -n "$spid" ] || return 0
  kill "$spid" 2>/dev/null || true
  for _ in $(seq 30); do
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  spid=""
}

inS() { ip netns exec "$S" "$@"; }
inC() { ip netns exec "$C" "$@"; }

cpu_busy() { # CORE -> busy jiffies so far (user+nice+system+irq+softirq+steal)
  awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

# ----- the namespaces and the veth pair ------------------------------------------------------
ip netns add "$S"
ip netns add "$C"
ip link add "$SV" type veth peer name "$CV"
ip link set "$SV" netns "$S"
ip link set "$CV" netns "$C"
inS ip link set lo up
inC ip link set lo up
for ns_if in "$S $SV" "$C $CV"; do
  read -r ns ifc <<<"$ns_if"
  ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$ifc.disable_ipv6=1" || true
  ip netns exec "$ns" ip link set "$ifc" up
done
inC ip addr add "$CIP/24" dev "$CV"
SMAC=$(inS cat "/sys/class/net/$SV/address")
CMAC=$(inC cat "/sys/class/net/$CV/address")

# kernel_mode: S's end has the kernel address; veth's default offloads (no checksums computed).
kernel_mode() {
  inS ip addr flush dev "$SV"
  inS ip addr add "$SIP/24" dev "$SV"
  inS ethtool -K "$SV" tx on >/dev/null 2>&1 || true
  inC ethtool -K "$CV" tx on >/dev/null 2>&1 || true
  inC ip neigh flush dev "$CV" 2>/dev/null || true
}

# stack_mode STATIC_ARP: S's end belongs to a userspace stack: no kernel address (or the kernel
# resets the stack's connections), checksums computed in software on both ends (smoltcp checks
# them), optionally a static ARP entry for the stack's address on the client.
stack_mode() {
  inS ip addr flush dev "$SV"
  inS ethtool -K "$SV" tx off >/dev/null
  inC ethtool -K "$CV" tx off >/dev/null
  inC ip neigh flush dev "$CV" 2>/dev/null || true
  if [ "$1" = 1 ]; then
    inC ip neigh replace "$SIP" lladdr "$SMAC" dev "$CV" nud permanent
  fi
}

# ----- measuring ----------------------------------------------------------------------------
results=$work/rows.tsv
: >"$results"

# row NAME PATH P50 P99 THROUGHPUT SRV_US CLI_US TOTAL_US BUSY NOTE
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$results"; }

# proc_cpu PID: utime+stime of process PID (all its threads) so far, in ticks (0 if gone).
proc_cpu() {
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# measured CMD...: run CMD pinned to the client core in C; sets m_out (its output), m_srv and
# m_cli (process CPU seconds of the server, $spid, and of CMD), m_busy ("core0% core1%" busy
# shares from /proc/stat) and m_ns (wall time).
measured() {
  local s0 c0 t0 p0 p1 cpu
  s0=$(cpu_busy "$sc")
  c0=$(cpu_busy "$cc")
  p0=$(proc_cpu "$spid")
  t0=$(date +%s%N)
  m_out=$(inC taskset -c "$cc" python3 -c '
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("client_cpu_s=%.6f" % (r.ru_utime + r.ru_stime), flush=True)' "$@" 2>&1) || true
  m_ns=$(($(date +%s%N) - t0))
  p1=$(proc_cpu "$spid")
  m_srv=$(awk -v a="$p0" -v b="$p1" -v t="$tck" 'BEGIN { printf "%.6f", (b > a) ? (b - a) / t : 0 }')
  cpu=$(echo "$m_out" | sed -n 's/^client_cpu_s=//p')
  m_cli=${cpu:-0}
  m_busy=$(awk -v s=$(($(cpu_busy "$sc") - s0)) -v c=$(($(cpu_busy "$cc") - c0)) -v t="$tck" \
    -v ns="$m_ns" 'BEGIN { printf "%.0f/%.0f", s * 1e11 / t / ns, c * 1e11 / t / ns }')
}

# costs N -> "server_us client_us total_us" per unit of work (process CPU of the last measured)
costs() {
  awk -v n="$1" -v s="$m_srv" -v c="$m_cli" 'BEGIN {
    if (n > 0) printf "%.2f %.2f %.2f", s * 1e6 / n, c * 1e6 / n, (s + c) * 1e6 / n
    else print "- - -" }'
}

bench_json() { # FIELD... of the --json line of ferry bench in $m_out
  echo "$m_out" | python3 -c '
import json, sys
keys = sys.argv[1:]
for line in sys.stdin:
    if line.startswith("{"):
        r = json.loads(line)
        print(" ".join(str(eval("r" + k)) for k in keys))
        break
else:
    print(" ".join("0" for _ in keys))' "$@"
}

# start_server NAME CMD...: CMD in S pinned to the server core; waits for ferry's
# "listening http" line (15 s). Returns 1 (and leaves the reason in $work/NAME.why) if not.
start_server() {
  local name=$1
  shift
  ip netns exec "$S" taskset -c "$sc" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  spid=$!
  for _ in $(seq 150); do
    if grep -q '^ferry: listening http ' "$work/$name.out" 2>/dev/null; then return 0; fi
    if ! kill -0 "$spid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  {
    echo -n "did not start: "
    grep -v '^\s*$' "$work/$name.err" | tail -n 2 | tr '\n' ' ' | cut -c1-200
  } >"$work/$name.why"
  stop_server
  return 1
}

# http_cells NAME PATH NOTE: sanity curl, warm-up, -c1 latency, -c64 throughput, one row.
http_cells() {
  local name=$1 path=$2 note=$3 url="http://$SIP:8080/"
  if ! inC curl -sS --max-time 5 --retry 2 --retry-delay 1 -o /dev/null "$url" 2>"$work/$name.curl"; then
    row "$name" "$path" - - - - - - - "no answer to curl: $(tr '\n' ' ' <"$work/$name.curl" | cut -c1-120)"
    return
  fi
  inC taskset -c "$cc" "$ferry" bench "$url" -c 64 --threads 1 -d 1s >/dev/null 2>&1 || true
  measured "$ferry" bench "$url" -c 1 --threads 1 -d "${dur}s" --json
  local p50 p99
  read -r p50 p99 <<<"$(bench_json '["latency_us"]["p50"]' '["latency_us"]["p99"]')"
  measured "$ferry" bench "$url" -c 64 --threads 1 -d "${dur}s" --json
  local n rps errs
  read -r n rps errs <<<"$(bench_json '["requests"]' '["rps"]' '["errors"]')"
  [ "${errs:-0}" != 0 ] && note="$note; $errs errors"
  local srv cli tot
  read -r srv cli tot <<<"$(costs "$n")"
  row "$name" "$path" "$p50" "$p99" "$(printf '%.0f req/s' "$rps")" "$srv" "$cli" "$tot" "$m_busy" "$note"
}

echo "transports: namespaces $S/$C, veth $SV/$CV, server core $sc, client core $cc, ${dur}s per cell" >&2

# ----- uring, epoll: kernel TCP on the veth -------------------------------------------------
kernel_mode
for d in uring epoll; do
  if start_server "$d" "$ferry" serve --driver "$d" --workers 1 --http "$SIP:8080" --drain-timeout 1s; then
    http_cells "$d" "kernel TCP on veth" "ferry serve --driver $d"
    stop_server
  else
    row "$d" "kernel TCP on veth" - - - - - - - "$(cat "$work/$d.why")"
  fi
done

# ----- xdp: AF_XDP (copy mode on veth) + smoltcp ---------------------------------------------
stack_mode 1
if start_server xdp "$ferry" serve --driver xdp --iface "$SV" --ip "$SIP/24" --http "$SIP:8080" --drain-timeout 1s; then
  http_cells xdp "AF_XDP (SKB mode, copy) + smoltcp" "XDP redirect to an XSK; veth has no zero-copy"
  stop_server
else
  row xdp "AF_XDP (SKB mode, copy) + smoltcp" - - - - - - - "not working: $(cat "$work/xdp.why")"
fi

# ----- dpdk: net_af_packet on the veth + smoltcp ---------------------------------------------
stack_mode 0
if start_server dpdk "$ferry" serve --driver dpdk --vdev "net_af_packet0,iface=$SV" --ip "$SIP/24" --http "$SIP:8080" --drain-timeout 1s; then
  http_cells dpdk "DPDK net_af_packet + smoltcp" "poll mode: the server core spins at 100%"
  stop_server
else
  row dpdk "DPDK net_af_packet + smoltcp" - - - - - - - "not working: $(cat "$work/dpdk.why")"
fi

# ----- raw: AF_PACKET framed messages (no TCP, no HTTP) ----------------------------------------
inS ethtool -K "$SV" tx on >/dev/null 2>&1 || true
inC ethtool -K "$CV" tx on >/dev/null 2>&1 || true
raw_row() {
  # latency: 64-byte echo, TPACKET_V2 rings on both sides (per-frame wake-ups)
  local rounds=$((dur * 5000))
  ip netns exec "$S" taskset -c "$sc" "$raw_bench" echo "$SV" "$CMAC" $((dur * 4 + 10)) v2 \
    >"$work/raw-echo.out" 2>"$work/raw-echo.err" &
  spid=$!
  sleep 0.3
  measured timeout $((dur * 4 + 10)) "$raw_bench" ping "$CV" "$SMAC" "$rounds" 64 v2
  stop_server
  local p50 p99
  read -r p50 p99 <<<"$(echo "$m_out" | python3 -c '
import json, sys
for l in sys.stdin:
    if l.startswith("{"):
        r = json.loads(l); print(r["p50_us"], r["p99_us"]); break
else:
    print("- -")')"
  [ "$p50" = - ] && {
    row raw "AF_PACKET framed" - - - - - - - "ping failed: $(echo "$m_out" | grep -v '^client_cpu_s=' | tail -n1 | cut -c1-150)"
    return
  }
  # throughput: flood of 1400-byte messages (TPACKET_V3 RX ring on the sink, sendmmsg)
  local n=$((dur * 150000))
  # (wrapped to get its CPU time: it exits on its own, before /proc/PID/stat can be read)
  ip netns exec "$S" taskset -c "$sc" python3 -c '
import resource, subprocess, sys
subprocess.run(sys.argv[1:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("server_cpu_s=%.6f" % (r.ru_utime + r.ru_stime), flush=True)' \
    "$raw_bench" sink "$SV" "$CMAC" $((dur * 4 + 10)) >"$work/raw-sink.out" 2>"$work/raw-sink.err" &
  spid=$!
  sleep 0.3
  measured timeout $((dur * 4 + 10)) "$raw_bench" flood "$CV" "$SMAC" "$n" 1400
  # the sink stops on "bye" or 0.5 s after the last frame
  for _ in $(seq 100); do
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  stop_server
  local sink
  sink=$(grep -m1 '^{' "$work/raw-sink.out" || true)
  if [ -z "$sink" ]; then
    row raw "AF_PACKET framed" "$p50" "$p99" - - - - - "sink gave no result: $(tail -n1 "$work/raw-sink.err")"
    return
  fi
  local msgs rate mbps lost drops
  read -r msgs rate mbps lost drops <<<"$(echo "$sink" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print(r["messages"], r["msgs_per_s"], r["mb_per_s"], r["lost_frames"], r["ring_drops"])')"
  m_srv=$(sed -n 's/^server_cpu_s=//p' "$work/raw-sink.out")
  m_srv=${m_srv:-0}
  local srv cli tot
  read -r srv cli tot <<<"$(costs "$msgs")"
  row raw "AF_PACKET framed" "$p50" "$p99" "$(printf '%.0f msg/s, %.0f MB/s' "$rate" "$mbps")" \
    "$srv" "$cli" "$tot" "$m_busy" "64 B echo (V2 rings); flood of $n x 1400 B (V3 ring): $msgs received, $lost lost (sequence gaps), $drops kernel ring drops"
}
raw_row

# ----- the table ------------------------------------------------------------------------------
echo
echo "| transport | path | -c1 p50 µs | -c1 p99 µs | throughput (-c64) | server CPU µs/req | client CPU µs/req | total µs/req | core $sc/$cc busy % | notes |"
echo "|---|---|---|---|---|---|---|---|---|---|"
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' "$results"
