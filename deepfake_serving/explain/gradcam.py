"""Grad-CAM (or Grad-CAM++) per face with pytorch-grad-cam, and each map's ROAD faithfulness figure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.metrics.road import ROADMostRelevantFirst
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from deepfake_serving.variants import Variant

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
# ROAD (remove and debias, Rong et al. 2022): the top 10 % of a map's pixels are removed and filled by
# ROAD's noisy linear imputation; the figure is how far P(fake) falls. A faithful map of a face the model
# calls fake points at what made it say so: removing it lowers P(fake).
ROAD_REMOVED = 0.10
LOGIT, PROBABILITY = 0, 1  # the columns of FakeEvidence's output


class FakeEvidence(nn.Module):
    """An archive's checkpoints as one network: per face, the mean of their fake logits (what Grad-CAM
    follows: a probability saturates, and at P(fake) = 1.0 in float32 its gradient is 0) and their mean
    P(fake) (what predictions report). The fake logit is the head's own: the output for ``logit_fake``,
    fake minus real for two logits, the input of the head's final sigmoid for ``prob_*`` heads."""

    def __init__(self, variant: Variant, models: Sequence[nn.Module]):
        super().__init__()
        self.variant = variant
        self.checkpoints = nn.ModuleList(models)
        self.before_sigmoid: dict[int, torch.Tensor] = {}
        if variant.output.startswith("prob_"):
            for i, model in enumerate(models):
                sigmoids = [m for m in model.modules() if isinstance(m, nn.Sigmoid)]
                if not sigmoids:
                    raise ValueError(f"{variant.name}: a {variant.output} head without a final nn.Sigmoid")
                sigmoids[-1].register_forward_hook(self._keep_input(i))

    def _keep_input(self, i: int):
        def hook(module, inputs, output):
            self.before_sigmoid[i] = inputs[0]
        return hook

    def fake_logit(self, i: int, out: torch.Tensor) -> torch.Tensor:
        convention = self.variant.output
        if convention == "logits_real_fake":
            return out[:, 1] - out[:, 0]
        if convention == "logit_fake":
            return out.reshape(-1)
        sign = -1.0 if convention == "prob_real" else 1.0
        return sign * self.before_sigmoid[i].reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [m(x) for m in self.checkpoints]
        logit = torch.stack([self.fake_logit(i, out) for i, out in enumerate(outputs)]).mean(0)
        p = torch.stack([self.variant.fake_probability(out) for out in outputs]).mean(0)
        return torch.stack([logit, p], dim=1)


@dataclass(frozen=True)
class FaceExplanation:
    heatmap: np.ndarray  # float32 in [0, 1], the model input's size; 0 on the black canvas around the crop
    fake_probability: float  # the torch weights' P(fake) for this face
    road_drop: float  # P(fake) before minus after the map's top ROAD_REMOVED is removed
    road_logit_drop: float  # the same in the fake logit (informative where P(fake) saturates at 0 or 1)


class FaceExplainer:
    """Heatmaps for model-ready crops (``variant.cam_layer`` of every checkpoint, maps averaged)."""

    def __init__(self, variant: Variant, models: Sequence[nn.Module], method: str = "gradcam"):
        if method not in METHODS:
            raise ValueError(f"unknown explanation method {method!r}; known: {', '.join(METHODS)}")
        self.variant, self.method = variant, method
        self.network = FakeEvidence(variant, [m.eval() for m in models]).eval()
        layers = [m.get_submodule(variant.cam_layer) for m in models]
        # Gradients are needed from the output back to the CAM layer, nowhere else: only that layer's own
        # parameters require them, so its output joins the autograd graph and the backward pass stops there.
        self.network.requires_grad_(False)
        for layer in layers:
            layer.requires_grad_(True)
        self.cam = METHODS[method](self.network, layers)
        self.road = ROADMostRelevantFirst(percentile=100 * (1 - ROAD_REMOVED))

    def explain(self, crops: Sequence[np.ndarray], windows: Sequence[tuple[int, int, int, int]]) -> list[FaceExplanation]:
        """One explanation per crop; ``windows`` (x, y, w, h): the part of each crop that is image
        (``faces.crops.content_window``), outside which its map is 0."""
        if not crops:
            return []
        faces = torch.from_numpy(self.variant.preprocessing.tensor(crops))
        maps = self.cam(faces, targets=[ClassifierOutputTarget(LOGIT)] * len(crops)).astype(np.float32)
        for heatmap, (x, y, w, h) in zip(maps, windows):
            inside = np.zeros_like(heatmap, dtype=bool)
            inside[y:y + h, x:x + w] = True
            heatmap[~inside] = 0.0
            peak = heatmap.max()
            if peak > 0:
                heatmap /= peak
        before = self.cam.outputs.detach().double().numpy()  # the forward pass Grad-CAM ran
        after = self.road(faces, maps, [both_columns] * len(crops), self.network, return_diff=False)
        drops = before - np.asarray(after, dtype=np.float64).reshape(len(crops), 2)
        return [FaceExplanation(m, float(b[PROBABILITY]), float(d[PROBABILITY]), float(d[LOGIT]))
                for m, b, d in zip(maps, before, drops)]


def both_columns(output: torch.Tensor) -> torch.Tensor:
    """ROAD's target: a face's fake logit and P(fake) after the removal, at once."""
    return output
