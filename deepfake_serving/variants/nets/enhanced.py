"""Seed 003: EfficientNet-B4 with multi-scale, frequency and edge branches and an attention gate.

Seed 003 names the parts and their widths (B4 1792 + multi-scale 64/128/256/512
+ frequency 256 + edge 128 = 3136 features, two classes [real, fake]) but not
their layers; the layers below are this project's definition of them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import cast

import timm
import torch
from torch import nn

SCALE_WIDTHS = (64, 128, 256, 512)
FREQUENCY_WIDTH = 256
EDGE_WIDTH = 128
BACKBONE_STAGES = [1, 2, 3, 4]  # timm feature stages at strides 4, 8, 16, 32


def _conv_stack(widths: list[int]) -> nn.Sequential:
    """Stride-2 3×3 conv/BN/ReLU blocks, then global average pooling."""
    layers: list[nn.Module] = []
    for cin, cout in zip(widths, widths[1:]):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=1, keepdim=True)


@lru_cache(maxsize=8)
def centred_dft(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin parts of the n-point DFT matrix with fftshift's row order folded in.

    ``fftshift(fft(v)) == (cos - i·sin) @ v``. Matrix products export to ONNX
    (``torch.fft`` does not), so both backends run the same graph.
    """
    frequencies = (torch.arange(n, dtype=torch.float64) - n // 2) % n
    angles = 2 * torch.pi * torch.outer(frequencies, torch.arange(n, dtype=torch.float64)) / n
    return angles.cos().float(), angles.sin().float()


class FrequencyBranch(nn.Module):
    """Log-magnitude of the centred 2-D Fourier spectrum, encoded by a small CNN."""

    def __init__(self, width: int = FREQUENCY_WIDTH):
        super().__init__()
        self.encoder = _conv_stack([1, 32, 64, 128, width])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = _grayscale(x).float()
        cos_h, sin_h = centred_dft(gray.shape[-2])
        cos_w, sin_w = centred_dft(gray.shape[-1])
        # (C_h − iS_h) X (C_w − iS_w)ᵀ, real and imaginary parts
        real = cos_h @ gray @ cos_w.T - sin_h @ gray @ sin_w.T
        imag = sin_h @ gray @ cos_w.T + cos_h @ gray @ sin_w.T
        return self.encoder(torch.log1p(torch.sqrt(real * real + imag * imag)))


class EdgeBranch(nn.Module):
    """Sobel gradient magnitude (fixed filters), encoded by a small CNN."""

    def __init__(self, width: int = EDGE_WIDTH):
        super().__init__()
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer("sobel", torch.stack([sobel_x, sobel_x.T]).unsqueeze(1), persistent=False)
        self.encoder = _conv_stack([1, 32, 64, width])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sobel = cast(torch.Tensor, self.sobel)  # a buffer
        gradients = nn.functional.conv2d(_grayscale(x), sobel, padding=1)
        return self.encoder(gradients.pow(2).sum(dim=1, keepdim=True).add(1e-6).sqrt())


class EnhancedB4Detector(nn.Module):
    """Returns two logits [real, fake]; the registry applies the softmax."""

    def __init__(self, dropout_rate: float = 0.4, attention_reduction: int = 32):
        super().__init__()
        self.backbone = timm.create_model("efficientnet_b4", pretrained=False, num_classes=0, global_pool="")
        stage_widths = [self.backbone.feature_info[i]["num_chs"] for i in BACKBONE_STAGES]
        self.multi_scale = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
            for cin, cout in zip(stage_widths, SCALE_WIDTHS)
        )
        self.frequency = FrequencyBranch()
        self.edge = EdgeBranch()
        self.feature_dim = self.backbone.num_features + sum(SCALE_WIDTHS) + FREQUENCY_WIDTH + EDGE_WIDTH  # 3136
        hidden = self.feature_dim // attention_reduction
        self.attention = nn.Sequential(
            nn.Linear(self.feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, self.feature_dim), nn.Sigmoid()
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout_rate),
            nn.Linear(self.feature_dim, 512),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(512),
            nn.Dropout(dropout_rate / 2),
            nn.Linear(512, 2),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        final, stages = self.backbone.forward_intermediates(x, indices=BACKBONE_STAGES)
        parts = [final.mean(dim=(2, 3))]
        parts += [branch(stage) for branch, stage in zip(self.multi_scale, stages)]
        parts += [self.frequency(x), self.edge(x)]
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return self.classifier(features * self.attention(features))
