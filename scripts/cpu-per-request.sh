#!/usr/bin/env bash
# CPU time per request of a server saturated on one core, user and system
# apart, for isopod builds and `deno serve` side by side. Requests/s swing
# with the machine's load; the CPU a request costs the server swings less,
# and alternating the servers round by round spreads what drift remains over
# all of them. Each round starts every server in turn on core 0 (one worker
# thread), loads it from core 1 (wrk, 32 connections, a 1 s warm-up, then 3 s
# measured), and reads the process's user and system ticks from /proc around
# the measured run. Prints each server's rounds and medians.
#
# usage: scripts/cpu-per-request.sh ROUNDS SERVER... (SERVER: a path to an
#        isopod binary, or `deno`); BUNDLE=path overrides examples/hello.js
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$isopod_root"
rounds="$1"
shift
bundle="${BUNDLE:-examples/hello.js}"
deno="${ISOPOD_PEERS:-$HOME/.cache/isopod-peers}/deno/package/deno"
if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk util-linux >/dev/null
fi
tick="$(getconf CLK_TCK)"
declare -A user system rps
port=19400
for _ in $(seq "$rounds"); do
  for server in "$@"; do
    port=$((port + 1))
    if [ "$server" = deno ]; then
      DENO_NO_UPDATE_CHECK=1 taskset -c 0 "$deno" serve --port "$port" --quiet "$bundle" >/dev/null 2>&1 &
    else
      taskset -c 0 "$server" run "$bundle" --port "$port" --threads 1 >/dev/null 2>&1 &
    fi
    launched=$!
    pid=""
    for _ in $(seq 50); do
      pid="$(ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)"
      [ -n "$pid" ] && break
      sleep 0.1
    done
    [ -n "$pid" ] || { echo "$server did not listen on $port" >&2; exit 1; }
    taskset -c 1 wrk -t1 -c32 -d1s "http://127.0.0.1:$port/" >/dev/null
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    out="$(taskset -c 1 wrk -t1 -c32 -d3s "http://127.0.0.1:$port/")"
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    kill "$launched"
    wait "$launched" 2>/dev/null || true
    requests="$(awk '/requests in/{print $1}' <<<"$out")"
    user[$server]+=" $(awk -v d=$((u1 - u0)) -v t="$tick" -v n="$requests" 'BEGIN{printf "%.2f", d / t / n * 1e6}')"
    system[$server]+=" $(awk -v d=$((s1 - s0)) -v t="$tick" -v n="$requests" 'BEGIN{printf "%.2f", d / t / n * 1e6}')"
    rps[$server]+=" $(awk '/Requests\/sec/{printf "%.0f", $2}' <<<"$out")"
  done
done
median() { tr ' ' '\n' <<<"$*" | grep . | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for server in "$@"; do
  echo "$server"
  echo "  user µs/request  [${user[$server]} ] median $(median ${user[$server]})"
  echo "  system µs/request[${system[$server]} ] median $(median ${system[$server]})"
  echo "  requests/s       [${rps[$server]} ] median $(median ${rps[$server]})"
done
