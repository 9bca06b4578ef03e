#!/usr/bin/env bash
# Installs the Workers peers isopod is checked against, from the npm
# registry, into $ISOPOD_PEERS: workerd (the reference for Workers
# semantics) and, for the benchmarks, deno.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
isopod_need_node
WORKERD_VERSION=1.20261117.1
mkdir -p "$ISOPOD_PEERS"
cd "$ISOPOD_PEERS"
if [ ! -x workerd/package/bin/workerd ] || [ "$(cat workerd/VERSION 2>/dev/null)" != "$WORKERD_VERSION" ]; then
  rm -rf workerd cloudflare-workerd-linux-64-*.tgz
  npm pack --silent "@cloudflare/workerd-linux-64@$WORKERD_VERSION" >/dev/null
  mkdir -p workerd
  tar xzf cloudflare-workerd-linux-64-*.tgz -C workerd
  echo "$WORKERD_VERSION" > workerd/VERSION
fi
echo "workerd: $ISOPOD_PEERS/workerd/package/bin/workerd"

if [ "${1:-}" != "--workerd-only" ]; then
  DENO_VERSION=2.9.6
  if [ ! -x deno/package/deno ] || [ "$(cat deno/VERSION 2>/dev/null)" != "$DENO_VERSION" ]; then
    rm -rf deno deno-linux-x64-glibc-*.tgz
    npm pack --silent "@deno/linux-x64-glibc@$DENO_VERSION" >/dev/null
    mkdir -p deno
    tar xzf deno-linux-x64-glibc-*.tgz -C deno
    echo "$DENO_VERSION" > deno/VERSION
  fi
  echo "deno: $ISOPOD_PEERS/deno/package/deno"
fi
