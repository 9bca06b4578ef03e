#!/usr/bin/env bash
# Builds the release binary, installs the load generator and the peers, and
# prints isopod's benchmark figures with ratios against deno measured in the
# same run. ISOPOD_BENCH_QUICK=1 for a short run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$isopod_root"
if ! command -v wrk >/dev/null || ! command -v taskset >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk util-linux >/dev/null
fi
bash scripts/install-peers.sh
cargo build --release --quiet -p isopod
cargo build --release --quiet -p isopod-server --example bare_hyper
exec python3 scripts/bench.py
