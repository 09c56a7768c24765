"""MTCNN without torch: facenet-pytorch's P/R/O-nets as ONNX graphs, its glue in numpy.

facenet-pytorch 2.5.3's ``detect_face`` reproduced step by step for one image
per call (the DFDC reference's way): the same image pyramid, area resampling
(``adaptive_avg_pool2d``'s bins), float32 box arithmetic, torchvision's NMS
(IoU without +1, scores descending) and the final "Min" NMS in numpy.
``tests/test_engines.py`` compares every box with facenet-pytorch's.

The graphs are exported once from the weights in facenet-pytorch's wheel
(MIT licence) by ``python -m deepfake_serving.builder.mtcnn_export`` and ship in the
package with their sha256 in ``assets/mtcnn/graphs.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Sequence

import cv2
import numpy as np

from deepfake_serving.engines.onnx_runtime import ort_session

ASSETS = resources.files("deepfake_serving") / "assets" / "mtcnn"
NETS = ("pnet", "rnet", "onet")
FACTOR = 0.709  # facenet-pytorch's pyramid factor
F32 = np.float32


class AreaSampler:
    """torch's ``interpolate(mode="area")`` (adaptive average pooling) of any region of a uint8 image,
    bit for bit: output cell (i, j) is the integer sum over rows floor(i·H/h) .. ceil((i+1)·H/h) and
    the matching columns, divided by the rows' count and then by the columns' in float32, as
    ATen's kernel does. One integral image serves the whole pyramid and every crop."""

    def __init__(self, rgb: np.ndarray):
        h, w = rgb.shape[:2]
        # int32 holds any sum of an image up to 8.4 Mpx (255 · H · W < 2³¹); float64 (exact for integers
        # below 2⁵³) beyond.
        depth = cv2.CV_32S if 255 * h * w < 2**31 else cv2.CV_64F
        self.integral = cv2.integral(np.ascontiguousarray(rgb), sdepth=depth)

    @staticmethod
    def _bins(start, stop, size: int) -> tuple[np.ndarray, np.ndarray]:
        """First and past-the-last input index of each of ``size`` output cells over start..stop (scalars,
        or arrays of regions: one row of cells per region)."""
        start = np.asarray(start, dtype=np.int64)[..., None]
        n, i = np.asarray(stop, dtype=np.int64)[..., None] - start, np.arange(size)
        return start + (i * n) // size, start - ((-(i + 1) * n) // size)

    def resize(self, rows: tuple[int, int], cols: tuple[int, int], height: int, width: int) -> np.ndarray:
        """The region rows × cols resized to (3, height, width) float32."""
        r0, r1 = self._bins(*rows, height)
        c0, c1 = self._bins(*cols, width)
        band = self.integral[r1] - self.integral[r0]  # each output row's sums, cumulative along columns
        sums = (band[:, c1] - band[:, c0]).astype(F32)
        out = sums / (r1 - r0).astype(F32)[:, None, None] / (c1 - c0).astype(F32)[None, :, None]
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    def crops(self, y: np.ndarray, ey: np.ndarray, x: np.ndarray, ex: np.ndarray, size: int) -> np.ndarray:
        """Regions rows y..ey × columns x..ex (one per box), each resized to (3, size, size): ``resize``
        for all boxes in one gather."""
        r0, r1 = self._bins(y, ey, size)
        c0, c1 = self._bins(x, ex, size)
        ii = self.integral
        r0, r1, c0, c1 = r0[:, :, None], r1[:, :, None], c0[:, None, :], c1[:, None, :]
        sums = (ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]).astype(F32)  # (boxes, size, size, 3)
        out = sums / (r1 - r0).astype(F32)[..., None] / (c1 - c0).astype(F32)[..., None]
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


# Work bounds (an image of tiled faces asked R-net for 5,867 boxes and O-net for 3,252 in one call each):
# each stage takes at most this many candidates, the highest-scoring ones. The photographs and clips of
# the detection tests stay far below them (at most ~330 into R-net, ~15 into O-net), so their boxes are
# the reference's. R-net and O-net run in fixed-size chunks, so ONNX Runtime's arena stays bounded.
MAX_NMS_CANDIDATES = 4000  # into any NMS (each P-net scale, then all scales together)
MAX_RNET_CANDIDATES = 2000
MAX_ONET_CANDIDATES = 500  # so at most 500 faces per image or frame
CHUNKS = {"rnet": 256, "onet": 64}
NMS_BLOCK = 512  # rows of the IoU matrix computed at once


def top(count: int, scores: np.ndarray) -> np.ndarray:
    """Indices of the ``count`` highest scores, in their original order (stable ties)."""
    if len(scores) <= count:
        return np.arange(len(scores))
    return np.sort(np.argsort(-scores, kind="stable")[:count])


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """torchvision.ops.nms on the CPU: float32 IoU, > threshold suppresses, kept indices by descending score.
    The IoU matrix is computed in blocks of rows (the same float32 operations as torchvision's, so the same
    decisions); only the greedy pass over it is a loop."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    n = len(order)
    over = np.zeros((n, n), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):  # empty boxes: NaN IoU, never over the threshold
        for start in range(0, n, NMS_BLOCK):
            rows = slice(start, start + NMS_BLOCK)
            w = np.maximum(F32(0), np.minimum(x2[rows, None], x2[None]) - np.maximum(x1[rows, None], x1[None]))
            h = np.maximum(F32(0), np.minimum(y2[rows, None], y2[None]) - np.maximum(y1[rows, None], y1[None]))
            inter = w * h
            over[rows] = inter / (areas[rows, None] + areas[None] - inter) > F32(threshold)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if not suppressed[i]:
            keep.append(i)
            suppressed[i + 1:] |= over[i, i + 1:]
    return order[np.array(keep, dtype=np.int64)]


def nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """facenet-pytorch's ``nms_numpy(..., 'Min')`` (its last stage), verbatim in behaviour."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    pick = []
    while order.size > 0:
        i = order[-1]
        pick.append(i)
        idx = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[idx]) - np.maximum(x1[i], x1[idx]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[idx]) - np.maximum(y1[i], y1[idx]) + 1)
        order = order[np.where(w * h / np.minimum(area[i], area[idx]) <= threshold)]
    return np.array(pick, dtype=np.int64)


def _rerec(boxes: np.ndarray) -> np.ndarray:
    """Square the boxes around their centres."""
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * F32(0.5) - side * F32(0.5)
    boxes[:, 1] = boxes[:, 1] + h * F32(0.5) - side * F32(0.5)
    boxes[:, 2:4] = boxes[:, :2] + side[:, None]
    return boxes


def _bbreg(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] = np.stack([boxes[:, 0] + reg[:, 0] * w, boxes[:, 1] + reg[:, 1] * h,
                             boxes[:, 2] + reg[:, 2] * w, boxes[:, 3] + reg[:, 3] * h], axis=1)
    return boxes


def _pad(boxes: np.ndarray, w: int, h: int):
    b = np.trunc(boxes[:, :4]).astype(np.int32)
    x, y, ex, ey = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    x[x < 1] = 1
    y[y < 1] = 1
    ex[ex > w] = w
    ey[ey > h] = h
    return y, ey, x, ex


def _ort_run(session, x: np.ndarray) -> list[np.ndarray]:
    return session.run(None, {"image": x})


def _normalise(a: np.ndarray) -> np.ndarray:
    return (a - F32(127.5)) * F32(0.0078125)


@dataclass
class OnnxMTCNN:
    """Detect faces in one RGB uint8 image: (boxes (N, 4) float32, probs (N,)) largest first, as
    facenet-pytorch's ``MTCNN(keep_all=True, select_largest=True).detect`` returns them. On the CPU the
    nets run on OpenVINO in f32 (2.2x ONNX Runtime's speed here, boxes within 1e-4 px of it); with other
    ONNX Runtime providers (CUDA) on ONNX Runtime."""

    min_face_size: int = 20
    thresholds: Sequence[float] = (0.6, 0.7, 0.7)
    threads: int | None = None
    providers: Sequence | None = None

    def __post_init__(self):
        self.candidates = 0  # boxes sent to R-net and O-net since creation (requests budget on it)
        digests = json.loads((ASSETS / "graphs.json").read_text())
        on_cpu = list(self.providers or ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
        self.runtime = "openvino" if on_cpu else "onnxruntime"
        if on_cpu:  # imported here: a process that never detects faces never maps OpenVINO
            from deepfake_serving.engines.openvino_runtime import OpenVinoNet
        self.nets = {}
        for net in NETS:
            data, name = (ASSETS / f"{net}.onnx").read_bytes(), f"{net}.onnx"
            if on_cpu:
                self.nets[net] = OpenVinoNet(data, name, digests[net], self.threads).run
            else:
                session = ort_session(data, name, digests[net], self.threads, self.providers)
                self.nets[net] = partial(_ort_run, session)

    def _run(self, net: str, batch: np.ndarray) -> list[np.ndarray]:
        return self.nets[net](batch)

    def _stage(self, net: str, image: AreaSampler, boxes: np.ndarray, size: int, w: int, h: int) -> list[np.ndarray]:
        """R-net or O-net over the boxes' crops, a fixed-size chunk at a time (crops cut per chunk)."""
        y, ey, x, ex = _pad(boxes, w, h)
        inside = (ey > y - 1) & (ex > x - 1)
        y, ey, x, ex = y[inside] - 1, ey[inside], x[inside] - 1, ex[inside]
        self.candidates += len(y)
        step = CHUNKS[net]
        parts = [self._run(net, _normalise(image.crops(y[i:i + step], ey[i:i + step], x[i:i + step], ex[i:i + step],
                                                       size))) for i in range(0, max(len(y), 1), step)]
        return [np.concatenate(outputs) for outputs in zip(*parts)]

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = rgb.shape[:2]
        image = AreaSampler(rgb)
        m = 12.0 / self.min_face_size
        scales, minl = [], min(h, w) * m
        scale = m
        while minl >= 12:
            scales.append(scale)
            scale, minl = scale * FACTOR, minl * FACTOR
        candidates = []
        for scale in scales:
            scaled = image.resize((0, h), (0, w), int(h * scale + 1), int(w * scale + 1))
            reg, probs = self._run("pnet", _normalise(scaled)[None])
            found = self._candidates(reg[0], probs[0, 1], scale, self.thresholds[0])
            found = found[top(MAX_NMS_CANDIDATES, found[:, 4])]
            candidates.append(found[nms(found[:, :4], found[:, 4], 0.5)])
        boxes = np.concatenate(candidates) if candidates else np.zeros((0, 9), F32)
        boxes = boxes[top(MAX_NMS_CANDIDATES, boxes[:, 4])]
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)][:MAX_RNET_CANDIDATES]  # by descending score
        reg_w, reg_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = np.stack([boxes[:, 0] + boxes[:, 5] * reg_w, boxes[:, 1] + boxes[:, 6] * reg_h,
                          boxes[:, 2] + boxes[:, 7] * reg_w, boxes[:, 3] + boxes[:, 8] * reg_h, boxes[:, 4]], axis=1)
        boxes = _rerec(boxes)
        if len(boxes):
            reg, probs = self._stage("rnet", image, boxes, 24, w, h)
            keep = probs[:, 1] > F32(self.thresholds[1])
            boxes = np.concatenate([boxes[keep, :4], probs[keep, 1:2]], axis=1)
            reg = reg[keep]
            pick = nms(boxes[:, :4], boxes[:, 4], 0.7)[:MAX_ONET_CANDIDATES]  # by descending score
            boxes = _rerec(_bbreg(boxes[pick], reg[pick]))
        if len(boxes):
            reg, _, probs = self._stage("onet", image, boxes, 48, w, h)
            keep = probs[:, 1] > F32(self.thresholds[2])
            boxes = _bbreg(np.concatenate([boxes[keep, :4], probs[keep, 1:2]], axis=1), reg[keep])
            boxes = boxes[nms_min(boxes[:, :4], boxes[:, 4], 0.7)]
        order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[::-1]
        boxes = boxes[order]
        return boxes[:, :4], boxes[:, 4]

    @staticmethod
    def _candidates(reg: np.ndarray, probs: np.ndarray, scale: float, threshold: float) -> np.ndarray:
        """facenet-pytorch's generateBoundingBox for one image: (x1, y1, x2, y2, score, 4 offsets) rows."""
        ys, xs = np.nonzero(probs >= F32(threshold))
        cells = np.stack([xs, ys], axis=1).astype(F32)
        q1 = np.floor((2 * cells + 1) / F32(scale))
        q2 = np.floor((2 * cells + 12) / F32(scale))
        return np.concatenate([q1, q2, probs[ys, xs, None], reg[:, ys, xs].T], axis=1).astype(F32)
