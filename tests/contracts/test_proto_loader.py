"""Every .proto file loads with Node's @grpc/proto-loader (protobufjs), not only with protoc/buf.

protobufjs has its own parser, stricter about option syntax than protoc (it rejects a list of
message literals, `reactions: [{...}, {...}]`); teams in TypeScript load the contracts with it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import PROTO_ROOT, REPO_ROOT, proto_files, run_node

# Runs the npm tools (buf, protobufjs, the AsyncAPI parser): not a unit test.
pytestmark = pytest.mark.integration

SCRIPT = REPO_ROOT / "clients" / "ts" / "load-protos.mjs"


def _load(proto_root: Path) -> subprocess.CompletedProcess[str]:
    return run_node(SCRIPT, proto_root, package="@grpc/proto-loader")


def test_every_proto_file_loads_with_proto_loader() -> None:
    result = _load(PROTO_ROOT)

    assert result.returncode == 0, result.stdout + result.stderr
    loaded = sorted(
        line.split()[1] for line in result.stdout.splitlines() if line.startswith("ok ")
    )
    assert loaded == [str(path) for path in proto_files()]


def test_the_check_catches_option_syntax_protobufjs_cannot_parse(tmp_path: Path) -> None:
    shutil.copytree(PROTO_ROOT, tmp_path / "proto")
    service = tmp_path / "proto" / "shop" / "payment" / "v1" / "payment_service.proto"
    text = service.read_text()
    first = text.index("    reactions: {")
    end = text.index("\n  };", first)
    # The same option in list-literal syntax, which protoc accepts and protobufjs does not.
    listed = text[first:end].replace("    reactions: {", "      {").replace("\n    }", "\n      },")
    service.write_text(
        text[:first] + "    reactions: [\n" + listed.rstrip(",") + "\n    ]" + text[end:]
    )

    result = _load(tmp_path / "proto")

    assert result.returncode == 1
    assert "FAILED shop/payment/v1/payment_service.proto" in result.stdout
