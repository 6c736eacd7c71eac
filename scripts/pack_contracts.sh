#!/usr/bin/env bash
# Packs the contracts as the npm package @choreo/shop-contracts (contracts/npm/package.json):
# JavaScript with .d.ts types generated from proto/ by protoc-gen-es (contracts/npm/buf.gen.yaml),
# and the .proto files under proto/ in the package, so other languages can generate from it too.
#
#   scripts/pack_contracts.sh [outdir]   the tarball goes to outdir (default: dist/ of the repo);
#                                        prints its path
#
# Needs node and npm on PATH, and buf and protoc-gen-es in node_modules/.bin (`make npm`).
# Works offline, and packs the same bytes from the same sources: it generates into a fresh
# staging folder and npm pack gives every file a fixed timestamp.
set -euo pipefail

usage="usage: $0 [outdir]"
case "${1:-}" in
  -h | --help)
    echo "$usage"
    exit 0
    ;;
  -*)
    echo "$usage" >&2
    exit 2
    ;;
esac
if [ $# -gt 1 ]; then
  echo "$usage" >&2
  exit 2
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"

# The outdir is relative to where the script was called from; the default is the repo's dist/.
outdir="${1:-$repo/dist}"
case "$outdir" in
  /*) ;;
  *) outdir="$PWD/$outdir" ;;
esac

cd "$repo"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "pack_contracts.sh: '$tool' is not on PATH; install Node.js 20+ (with npm)" >&2
    exit 1
  fi
done
for tool in buf protoc-gen-es; do
  if [ ! -x "node_modules/.bin/$tool" ]; then
    echo "pack_contracts.sh: node_modules/.bin/$tool is missing; run \`make npm\` (npm ci)" >&2
    exit 1
  fi
done

mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

cp contracts/npm/package.json contracts/npm/README.md "$stage/"

# The generated code, at the package's root (shop/order/v1/events_pb.js and .d.ts, ...).
node_modules/.bin/buf generate --template contracts/npm/buf.gen.yaml --output "$stage"

# The .proto files: shop's, and everything they import (the choreography options, the
# protovalidate schema) plus the google.rpc error types the services send; the vendored ones
# keep their README of origin. The well-known types come with every protoc and buf.
for dir in shop choreo/choreography buf/validate google/rpc; do
  mkdir -p "$stage/proto/$dir"
  cp -R "proto/$dir/." "$stage/proto/$dir/"
done
if [ -n "$(find "$stage/proto" -type f ! -name '*.proto' ! -name 'README.md')" ]; then
  echo "pack_contracts.sh: proto/ holds files other than .proto and README.md:" >&2
  find "$stage/proto" -type f ! -name '*.proto' ! -name 'README.md' >&2
  exit 1
fi

# No scripts run, nothing is fetched: npm pack only reads the staging folder.
tarball="$(cd "$stage" && npm pack --offline --ignore-scripts --silent --pack-destination "$outdir")"
echo "$outdir/$tarball"
