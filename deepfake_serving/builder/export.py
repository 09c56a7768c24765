"""One variant's checkpoints as one ONNX graph: normalised faces → P(fake) per checkpoint.

The graph carries the variant's output convention, so whatever runs it (ONNX
Runtime in Triton's python backend here, TensorRT or the onnxruntime backend
elsewhere) returns P(fake) without knowing the variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from deepfake_serving.variants import Variant

INPUT_NAME = "faces"
OUTPUT_NAME = "fake_probability"
OPSET = 17


class FakeProbabilities(nn.Module):
    """(N, 3, S, S) normalised faces → (N, checkpoints) P(fake)."""

    def __init__(self, variant: Variant, models: Sequence[nn.Module]):
        super().__init__()
        self.variant = variant
        self.models = nn.ModuleList(models)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.variant.fake_probability(model(faces)) for model in self.models], dim=1)


def exporter_info() -> dict:
    """What the manifest records about the export."""
    return {"opset": OPSET, "exporter": f"torch.onnx TorchScript exporter, torch {torch.__version__}"}


def export_onnx(variant: Variant, models: Sequence[nn.Module], path: str | Path) -> Path:
    """Export with a dynamic face count (the TorchScript-based exporter: no onnxscript needed)."""
    path = Path(path)
    size = variant.preprocessing.input_size
    module = FakeProbabilities(variant, [m.eval() for m in models]).eval()
    example = torch.zeros(2, 3, size, size)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            module, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "faces"}, OUTPUT_NAME: {0: "faces"}},
            opset_version=OPSET, dynamo=False,
        )
    return path
