#!/usr/bin/env bash
# Regenerates gen/python, gen/ts and docs/asyncapi.yaml from proto/, deterministically (wipe,
# then generate).
#
#   scripts/gen.sh           regenerate gen/ and docs/asyncapi.yaml in place
#   scripts/gen.sh --check   generate into a temporary folder and fail if either differs
#
# Needs on PATH (the Makefile arranges it): python with grpcio-tools and mypy-protobuf
# (.venv/bin) and buf with protoc-gen-es (node_modules/.bin). Works offline.
set -euo pipefail

cd "$(dirname "$0")/.."

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac

python="${PYTHON:-python}"
for tool in "$python" buf protoc-gen-es protoc-gen-mypy protoc-gen-mypy_grpc; do
  if ! command -v "$tool" >/dev/null; then
    echo "gen.sh: '$tool' is not on PATH; run \`make gen\` (it adds .venv/bin and node_modules/.bin)" >&2
    exit 1
  fi
done

if $check; then
  root="$(mktemp -d)"
  trap 'rm -rf "$root"' EXIT
else
  root="."
fi
out="$root/gen"

# Sorted, so that protoc sees the files in the same order on every machine. This includes the
# vendored buf/validate/validate.proto: the generated choreo modules import buf.validate.validate_pb2
# for their validation options, and the protovalidate package ships its own copy only under a
# private name (protovalidate._gen, for its own protobuf runtime), so nothing here conflicts.
mapfile -t protos < <(cd proto && find . -name '*.proto' -printf '%P\n' | LC_ALL=C sort)
# The vendored google/rpc/*.proto get TypeScript only (buf.gen.yaml): Python has them from the
# googleapis-common-protos package, and a second google.rpc Python package would conflict with it.
mapfile -t python_protos < <(printf '%s\n' "${protos[@]}" | grep -v '^google/rpc/')

# The well-known types (google/protobuf/*.proto) that ship with grpc_tools' bundled protoc.
wkt="$("$python" -c 'import importlib.resources as r; print(r.files("grpc_tools") / "_proto")')"

# Python: messages, gRPC stubs, and mypy-protobuf's typed stubs (.pyi) for both.
# No __init__.py anywhere: choreo/__init__.py extends __path__ to find gen/python/choreo, and
# the sub-packages are namespace packages.
rm -rf "$out/python"
mkdir -p "$out/python"
"$python" -m grpc_tools.protoc \
  --proto_path=proto \
  --proto_path="$wkt" \
  --python_out="$out/python" \
  --grpc_python_out="$out/python" \
  --mypy_out="$out/python" \
  --mypy_opt=quiet \
  --mypy_grpc_out="$out/python" \
  --mypy_grpc_opt=quiet \
  "${python_protos[@]}"

# TypeScript, from buf.gen.yaml (the local protoc-gen-es).
rm -rf "$out/ts"
buf generate --template buf.gen.yaml --output "$root"

# AsyncAPI 3 description of the events (docs/asyncapi.yaml), from the generated descriptors.
mkdir -p "$root/docs"
"$python" scripts/asyncapi.py "$root/docs/asyncapi.yaml"

if $check; then
  if ! diff -r -x __pycache__ "$out" gen; then
    echo "gen/ is stale: run \`make gen\`" >&2
    exit 1
  fi
  if ! diff "$root/docs/asyncapi.yaml" docs/asyncapi.yaml; then
    echo "docs/asyncapi.yaml is stale: run \`make gen\`" >&2
    exit 1
  fi
  echo "gen/ and docs/asyncapi.yaml are up to date"
fi
