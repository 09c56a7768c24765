"""Export facenet-pytorch's MTCNN nets (P, R, O) as the ONNX graphs the package ships with their sha256
(needs torch and facenet-pytorch; run once, the output is committed): ``python -m deepfake_serving.builder.mtcnn_export``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

from deepfake_serving.faces.mtcnn import ASSETS


def export(directory=None) -> dict[str, str]:
    directory = Path(directory or str(ASSETS))
    directory.mkdir(parents=True, exist_ok=True)
    digests = {}
    for net, module, size, outputs in (("pnet", PNet(), None, ["reg", "prob"]),
                                       ("rnet", RNet(), 24, ["reg", "prob"]),
                                       ("onet", ONet(), 48, ["reg", "landmarks", "prob"])):
        example = torch.zeros(1, 3, size or 48, size or 64)
        axes = {"image": {0: "n", 2: "h", 3: "w"} if size is None else {0: "n"}}
        path = directory / f"{net}.onnx"
        torch.onnx.export(module.eval(), (example,), str(path), input_names=["image"], output_names=outputs,
                          dynamic_axes=axes, opset_version=17, dynamo=False)
        digests[net] = hashlib.sha256(path.read_bytes()).hexdigest()
    (directory / "graphs.json").write_text(json.dumps(digests, indent=2) + "\n")
    return digests


if __name__ == "__main__":
    import sys

    if sys.argv[1:]:
        sys.exit("usage: python -m deepfake_serving.builder.mtcnn_export")
    print(json.dumps(export(), indent=2))
