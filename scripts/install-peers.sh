#!/usr/bin/env bash
# Installs the Workers peers isopod is checked against, from the npm
# registry, into $ISOPOD_PEERS: workerd (the reference for Workers semantics).
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
