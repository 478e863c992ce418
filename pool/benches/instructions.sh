#!/bin/sh
# Instructions per checkout→checkin cycle, counted by callgrind over runs of 20k and 60k cycles
# and differenced, so set-up and warm-up cancel out (repeatable to an instruction or two on a
# busy machine). Needs valgrind. Columns:
#   cycle: all of `measured` (pool calls + this harness's own work: the lease ring, the
#          event pump, the virtual clock);
#   pool:  inside the pool's entry points only (checkout, checkin, connected, handle_timeout,
#          poll_timeout, metrics), each called through an `#[inline(never)]` wrapper.
# Usage: pool/benches/instructions.sh [case...]   (default: one inflight keys4 keys4h expire)
set -euf # no globbing: the toggle patterns hold `*`
cd "$(dirname "$0")/../.."
bin=$(cargo bench -p ferry-pool --bench cycle --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*cycle-[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "bench binary not found" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() { # case cycles toggle...
  c_case=$1 c_n=$2
  shift 2
  set -- $(for f in "$@"; do printf -- '--toggle-collect=%s ' "$f"; done)
  valgrind --tool=callgrind "$@" --callgrind-out-file="$tmp/cg" "$bin" run "$c_case" "$c_n" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
[ $# -gt 0 ] || set -- one inflight keys4 keys4h expire
printf '%-9s %6s %6s   (instructions per cycle)\n' case cycle pool
for case in "$@"; do
  a=$(count "$case" 20000 '*measured*')
  b=$(count "$case" 60000 '*measured*')
  pa=$(count "$case" 20000 '*cycle::pool_*')
  pb=$(count "$case" 60000 '*cycle::pool_*')
  printf '%-9s %6d %6d\n' "$case" $(((b - a) / 40000)) $(((pb - pa) / 40000))
done
