"""Generate Python gRPC stubs from the protos inside TorchServe's own model-server.jar.

The stubs are committed under ``grpc_stubs/`` (clients need not install
TorchServe); ``tests/test_grpc_codegen.py`` regenerates them and checks they match.
Run: ``python -m deepfake_serving.serving.client.grpc_codegen``.
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

PROTOS = ("inference.proto", "management.proto")
STUB_DIR = Path(__file__).parent / "grpc_stubs"


def model_server_jar() -> Path:
    return Path(str(resources.files("ts"))) / "frontend" / "model-server.jar"


def generate(out_dir: Path = STUB_DIR) -> list[Path]:
    from grpc_tools import protoc

    google_protos = Path(str(resources.files("grpc_tools"))) / "_proto"
    from google.rpc import status_pb2  # googleapis-common-protos ships google/rpc/status.proto beside it

    common_protos = Path(status_pb2.__file__).parents[2]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(model_server_jar()) as jar:
            for name in PROTOS:
                (Path(tmp) / name).write_bytes(jar.read(f"proto/{name}"))
        args = ["protoc", f"-I{tmp}", f"-I{google_protos}", f"-I{common_protos}",
                f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *(str(Path(tmp) / n) for n in PROTOS)]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on TorchServe's protos")
    written = []
    for path in sorted(out_dir.glob("*_pb2*.py")):
        # protoc writes top-level imports; make them package-relative.
        text = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", path.read_text(), flags=re.M)
        path.write_text(text)
        written.append(path)
    (out_dir / "__init__.py").write_text('"""Stubs generated from TorchServe 0.12.0\'s protos by grpc_codegen.py."""\n')
    return written


if __name__ == "__main__":
    for p in generate():
        print(p)
