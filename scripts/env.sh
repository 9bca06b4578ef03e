# Sourced by isopod's scripts: the environment every build here needs.
#
# - RUSTY_V8_ARCHIVE: machines without internet access use the V8 library
#   prebuilt in ../shared/v8 (built for v8 150.4.0, the version Cargo.lock
#   pins). Elsewhere cargo downloads the official one and nothing is set.
# - CARGO_TARGET_DIR: kept outside the clone, so successive clones on one
#   machine (CI runs) reuse the build.

isopod_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
v8_archive="$isopod_root/../shared/v8/librusty_v8_simdutf_release_x86_64-unknown-linux-gnu.a.gz"
if [ -f "$v8_archive" ] && [ -z "${RUSTY_V8_ARCHIVE:-}" ]; then
  RUSTY_V8_ARCHIVE="$(realpath "$v8_archive")"
  export RUSTY_V8_ARCHIVE
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/isopod/target}"
export ISOPOD_PEERS="${ISOPOD_PEERS:-$HOME/.cache/isopod-peers}"

# Node.js and npm build the example apps with esbuild; Debian's packages
# serve where the machine has none.
isopod_need_node() {
  if ! command -v npm >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  fi
}
