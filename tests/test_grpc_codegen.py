"""The committed gRPC stubs are exactly what TorchServe's own protos generate."""

from deepfake_serving.serving.client import grpc_codegen


def test_committed_stubs_match_torchserve_protos(tmp_path):
    generated = grpc_codegen.generate(tmp_path)
    assert {p.name for p in generated} == {
        "inference_pb2.py", "inference_pb2_grpc.py", "management_pb2.py", "management_pb2_grpc.py"}
    for path in generated:
        assert path.read_text() == (grpc_codegen.STUB_DIR / path.name).read_text(), path.name
