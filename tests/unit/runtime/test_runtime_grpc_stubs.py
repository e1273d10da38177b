"""The checked-in protoc output in hotswap_runtime/serving/grpc_v2 is what its .proto gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PACKAGE = Path("hotswap_runtime") / "serving" / "grpc_v2"


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(REPO / "runtime"),
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(REPO / "runtime" / PACKAGE / "inference.proto"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for name in ("inference_pb2.py", "inference_pb2.pyi"):
        fresh = (tmp_path / PACKAGE / name).read_text()
        assert (REPO / "runtime" / PACKAGE / name).read_text() == fresh, (
            f"{name} is stale: regenerate it (command in inference.proto)"
        )


def test_service_speaks_the_kserve_v2_names() -> None:
    from hotswap_runtime.serving.grpc_server import SERVICE
    from hotswap_runtime.serving.grpc_v2 import inference_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == SERVICE == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }
    fields = pb.ModelInferRequest.DESCRIPTOR.fields_by_name
    assert fields["raw_input_contents"].number == 7
    assert pb.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number == 6
