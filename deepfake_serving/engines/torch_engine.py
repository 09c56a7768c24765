"""PyTorch eager over each checkpoint: the reference engine (imports torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from deepfake_serving.engines import Device

if TYPE_CHECKING:
    from deepfake_serving.variants import Variant


def set_torch_threads(threads: int) -> int:
    """Intra-op threads as given, one inter-op thread: workers × threads must not oversubscribe the
    cores (servers do not set this themselves)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    return threads


class TorchScorer:
    def __init__(self, variant: "Variant", models, batch_size: int = 1, device: Device = Device()):
        models = [models] if isinstance(models, torch.nn.Module) else list(models)
        if not models:
            raise ValueError("a classifier needs at least one model")
        self.variant, self.batch_size, self.device = variant, batch_size, device
        self.models = [m.eval().to(device.torch) for m in models]

    def scores(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        pre = self.variant.preprocessing
        out = np.zeros((len(self.models), len(crops)), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                batch = torch.from_numpy(pre.tensor(crops[start:start + self.batch_size])).to(self.device.torch)
                for m, model in enumerate(self.models):
                    out[m, start:start + len(batch)] = self.variant.fake_probability(model(batch)).double().cpu().numpy()
        return out
