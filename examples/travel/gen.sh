#!/usr/bin/env bash
# The travel example's code generation: the booking, flights and hotels teams' proto/ into
# gen/python, with the choreography options and the protovalidate rules taken from the choreo
# repository's proto/ (the runtime ships their generated Python, so only acme/ is generated
# here).
#
#   examples/travel/gen.sh          regenerate gen/python in place
#   examples/travel/gen.sh --check  generate into a temporary folder; fail if gen/ differs
#
# Needs python with grpcio-tools and mypy-protobuf (the repository's .venv has both).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
choreo_proto="${CHOREO_PROTO:-$here/../../proto}"
python="${PYTHON:-python}"

out="$here/gen/python"
if [[ "${1:-}" == "--check" ]]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
elif [[ -n "${1:-}" ]]; then
  echo "usage: $0 [--check]" >&2
  exit 2
fi

wkt="$("$python" -c 'import importlib.resources as r; print(r.files("grpc_tools") / "_proto")')"
mapfile -t protos < <(cd "$here/proto" && find . -name '*.proto' -printf '%P\n' | LC_ALL=C sort)

rm -rf "$out/acme"
mkdir -p "$out"
"$python" -m grpc_tools.protoc \
  --proto_path="$here/proto" \
  --proto_path="$choreo_proto" \
  --proto_path="$wkt" \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --mypy_out="$out" \
  --mypy_opt=quiet \
  --mypy_grpc_out="$out" \
  --mypy_grpc_opt=quiet \
  "${protos[@]}"

if [[ "${1:-}" == "--check" ]]; then
  if ! diff -r -x __pycache__ "$out/acme" "$here/gen/python/acme"; then
    echo "examples/travel/gen is stale: run examples/travel/gen.sh" >&2
    exit 1
  fi
  echo "examples/travel/gen is up to date"
fi
