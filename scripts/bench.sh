#!/usr/bin/env bash
# isopod's benchmarks in one command: builds the release binaries, installs
# the load generator (wrk) and the peers (deno, workerd), builds the bundles
# (examples/dist, bench/realworld), runs scripts/bench.py and draws the
# charts (bench/charts). Measures, and prints:
#   - `isopod run`'s start to first response, snapshot size, RSS;
#   - hello world and a realistic handler (bench/handlers/realistic.js)
#     requests/s on one core against `deno serve`, workerd and bare hyper,
#     in interleaved rounds after a warm-up, with per-round ratios;
#   - warm dispatch latency; RSS per idle warm instance against 10 to 1,000
#     apps (small and the ~950 KB real-world bundle); blank-isolate and
#     cold-miss latency; a framework bundle's cold start;
#   - the first request of never-seen apps (small and real, spare ready or
#     not, snapshots on and off), p50/p99 and the latency CDF;
#   - a process started to its first response against deno and workerd;
#     replicas; a Zipf load's hit rate; neighbours; the CPU clock's cost;
#   - KV (SQLite and Redis) and D1 calls through the bindings, from one app
#     and from 100, next to a handler that does no storage, and what a bare
#     SQLite read and the store's calls cost below the binding;
#   - each target next to its figure, met or missed by how much.
# Writes target/bench/results.json (every figure, raw samples included;
# ISOPOD_BENCH_OUT moves it), BENCHMARKS.md and docs/bench/*.svg.
# ISOPOD_BENCH_QUICK=1 for a short run that checks the harness works; it
# says so at the top of BENCHMARKS.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$isopod_root"
if ! command -v wrk >/dev/null || ! command -v taskset >/dev/null \
  || ! command -v redis-server >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk util-linux redis-server >/dev/null
fi
bash scripts/install-peers.sh
[ -f examples/dist/hono.js ] || bash scripts/build-examples.sh
if [ ! -f bench/realworld/dist/app.js ]; then
  npm --prefix bench/realworld ci --no-audit --no-fund --loglevel=error
  npm --prefix bench/realworld run --silent build
fi
cargo build --release --quiet -p isopod
cargo build --release --quiet -p isopod-server --example bare_hyper
cargo build --release --quiet -p isopod-bench-charts
cargo build --release --quiet -p isopod-store --example kv_call_cost
results="${ISOPOD_BENCH_OUT:-target/bench/results.json}"
# A section that fails leaves the others' figures: draw the charts anyway,
# then fail.
status=0
ISOPOD_BENCH_COMMAND="bash scripts/bench.sh" python3 scripts/bench.py || status=$?
"$CARGO_TARGET_DIR/release/isopod-bench-charts" "$results" docs/bench || status=$?
exit "$status"
