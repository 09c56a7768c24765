"""A graph as a face scorer: crops → normalised batches of the engine's size → (checkpoints, faces) P(fake)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from deepfake_serving.core.errors import CheckpointError
from deepfake_serving.engines import Graph

if TYPE_CHECKING:
    from deepfake_serving.variants import Variant


class GraphScorer:
    def __init__(self, graph: Graph, variant: "Variant", batch_size: int, name: str = "classifier.onnx"):
        size = variant.preprocessing.input_size
        if list(graph.input_shape[1:]) != [3, size, size]:
            raise CheckpointError(f"{name} takes input {graph.input_shape}; variant {variant.name} needs "
                                  f"[faces, 3, {size}, {size}]")
        self.graph, self.variant, self.batch_size = graph, variant, batch_size

    def scores(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        pre = self.variant.preprocessing
        parts = [self.graph.run(pre.tensor(crops[i:i + self.batch_size])) for i in range(0, len(crops), self.batch_size)]
        if not parts:
            return np.zeros((0, 0))
        return np.concatenate(parts).T.astype(np.float64)
