#!/usr/bin/env bash
# Instructions per request for a bundle on one worker thread, counted by
# callgrind: a figure that does not swing with the machine's load the way
# requests/s do here (±15 % between runs), for comparing two builds of a
# change to the request path. Counts every thread of the process, from a
# warmed-up server, over SECONDS of wrk load (32 connections); fewer requests
# per second under valgrind raise the per-batch share a little, so compare
# runs that served similar numbers of requests.
#
# The warm-up (WARMUP seconds, 30 by default) must outlast V8's optimising
# compiles: everything runs about 50x slower under valgrind, so a
# framework's functions are still being compiled by TurboFan (on V8's worker
# threads, counted here) long after a native warm-up would be over. The
# profile shows it as `OptimizingCompileTaskExecutor`: warm up longer.
#
# usage: [WARMUP=30] scripts/instructions.sh [BUNDLE] [SECONDS] [ISOPOD_BINARY]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$isopod_root"
bundle="${1:-examples/hello.js}"
seconds="${2:-12}"
binary="${3:-}"
if ! command -v valgrind >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq valgrind wrk util-linux >/dev/null
fi
if [ -z "$binary" ]; then
  cargo build --release --quiet -p isopod
  binary="$CARGO_TARGET_DIR/release/isopod"
fi
out="$(mktemp -d)"
port=$((20000 + RANDOM % 20000))
# Instrumentation starts off (start-up and warm-up are not counted); the
# CPU budgets are raised because everything runs about 50x slower.
taskset -c 0 valgrind --tool=callgrind --smc-check=all-non-file --instr-atstart=no \
  --callgrind-out-file="$out/callgrind.out" \
  "$binary" run "$bundle" --port "$port" --threads 1 \
  --limit startup_cpu_ms=100000 --limit cpu_ms=100000 >"$out/log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -s -m 2 "http://127.0.0.1:$port/" >/dev/null && break
  sleep 1
done
taskset -c 1 wrk -t1 -c32 -d"${WARMUP:-30}s" "http://127.0.0.1:$port/" >/dev/null
callgrind_control -i on "$server" >/dev/null 2>&1
load="$(taskset -c 1 wrk -t1 -c32 -d"${seconds}s" "http://127.0.0.1:$port/")"
callgrind_control -i off "$server" >/dev/null 2>&1
callgrind_control -d "$server" >/dev/null 2>&1
# The dump is written by the server in its own time.
for _ in $(seq 60); do
  grep -q '^totals:' "$out/callgrind.out.1" 2>/dev/null && break
  sleep 1
done
requests="$(awk '/requests in/{print $1}' <<<"$load")"
instructions="$(awk '/^totals:/{s+=$2} END{print s+0}' "$out/callgrind.out.1")"
echo "bundle $bundle: $requests requests, $instructions instructions, $((instructions / requests)) per request"
echo "profile: callgrind_annotate $out/callgrind.out.1"
