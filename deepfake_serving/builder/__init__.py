"""Building bundles (imports torch): ``write_bundle``, the ONNX export and reduced precision."""

from deepfake_serving.builder.write import write_bundle

__all__ = ["write_bundle"]
