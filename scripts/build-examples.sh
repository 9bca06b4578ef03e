#!/usr/bin/env bash
# Bundles the framework examples (Hono, itty-router) with esbuild into
# examples/dist/, as a user would bundle their app.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
isopod_need_node
cd "$isopod_root/examples"
npm ci --no-audit --no-fund --loglevel=error
npm run --silent build
