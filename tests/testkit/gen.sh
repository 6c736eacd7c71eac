#!/usr/bin/env bash
# The runtime's test contracts: tests/testkit/proto into tests/testkit/gen/python, with the
# choreography options and the protovalidate rules taken from the repository's proto/ (the
# runtime ships their generated Python, so only testkit/ is generated here). Only choreo's own
# tests (tests/runtime, tests/store) use these contracts; the reference system never does.
#
#   tests/testkit/gen.sh          regenerate gen/python in place
#   tests/testkit/gen.sh --check  generate into a temporary folder; fail if gen/ differs
#
# Needs python with grpcio-tools and mypy-protobuf (the repository's .venv has both).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
choreo_proto="${CHOREO_PROTO:-$here/../../proto}"
python="${PYTHON:-python}"
# protoc finds the mypy plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) beside that python.
PATH="$(dirname "$(command -v "$python")"):$PATH"

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

rm -rf "$out/testkit"
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
  if ! diff -r -x __pycache__ "$out/testkit" "$here/gen/python/testkit"; then
    echo "tests/testkit/gen is stale: run tests/testkit/gen.sh" >&2
    exit 1
  fi
  echo "tests/testkit/gen is up to date"
fi
