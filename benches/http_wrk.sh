#!/usr/bin/env bash
# The axum layer end to end: wrk against examples/http_bench_server.rs, the
# server pinned to core 0 and wrk to core 1, each route in turn, interleaved
# over several rounds so that drifting load hits every route alike.
#
#   benches/http_wrk.sh [ROUNDS] [SECONDS]      (defaults: 3 rounds of 10 s)
#
# Prints one line per route and round, then the medians and each route's
# throughput as a ratio of the no-op layer's (the control) and of the open
# route's:
#   http_wrk: route=<id> round=<r> rps=<requests per second>
#   http_wrk: route=<id> median_rps=<n> vs_noop=<ratio> vs_open=<ratio>
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
seconds="${2:-10}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }

cargo build --release --features axum --example http_bench_server >&2
out="$(mktemp)"
post="$(mktemp --suffix=.lua)"
echo 'wrk.method = "POST"' >"$post"
taskset -c 0 target/release/examples/http_bench_server 127.0.0.1:0 >"$out" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$out" "$post"' EXIT
for _ in $(seq 1 50); do grep -q '^listening=' "$out" && break; sleep 0.1; done
token="$(sed -n 's/^token=//p' "$out")"
addr="$(sed -n 's/^listening=//p' "$out")"

declare -A results
routes=(open noop_layer protected scoped scoped_now)
for round in $(seq 1 "$rounds"); do
  for route in "${routes[@]}"; do
    path="$(sed -n "s/^route=$route path=//p" "$out")"
    rps="$(taskset -c 1 wrk -t1 -c32 -d"${seconds}s" -s "$post" \
        -H "Authorization: Bearer $token" "http://$addr$path" \
      | awk '/^Requests\/sec/ {print $2}')"
    status="$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $token" "http://$addr$path")"
    [ "$status" = 200 ] || { echo "route $route answered $status" >&2; exit 1; }
    echo "http_wrk: route=$route round=$round rps=$rps"
    results[$route]+="$rps "
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
noop="$(echo "${results[noop_layer]}" | median)"
open="$(echo "${results[open]}" | median)"
for route in "${routes[@]}"; do
  m="$(echo "${results[$route]}" | median)"
  awk -v r="$route" -v m="$m" -v n="$noop" -v o="$open" \
    'BEGIN {printf "http_wrk: route=%s median_rps=%.0f vs_noop=%.3f vs_open=%.3f\n", r, m, m/n, m/o}'
done
