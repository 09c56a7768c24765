"""Reduced precision, allowed only with proof of agreement with fp32 on held-out faces (the user's folder, or
the built-in sample faces: ``deepfake_serving.media.samples.holdout_images``).

- ``int8``: ONNX Runtime static quantization (QDQ, per-channel) calibrated on the user's face crops.
- ``fp16``: the graph's weights and arithmetic in float16, its inputs and outputs float32 (for ONNX
  Runtime's CUDA execution provider; on a CPU ONNX Runtime casts around every fp16 node, so it is slower
  there, but the proof measures the same rounding).
- ``bf16``: the fp32 graph, compiled by OpenVINO with bfloat16 inference precision (CPUs with bf16
  units: AVX512-BF16, AMX); engine ``openvino`` only.

The folders hold photographs; their faces are found and cropped by the same face stage that serves
the variant. The agreement (every checkpoint's P(fake) on every held-out face, against the fp32 graph
on ONNX Runtime) goes into the manifest; a graph that breaches ``LIMITS`` is refused and nothing is
written.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from deepfake_serving.builder.engine_choice import decide
from deepfake_serving.bundle.manifest import REDUCED_PRECISIONS
from deepfake_serving.core.errors import CheckpointError
from deepfake_serving.engines import graph_runtime
from deepfake_serving.pipeline.image import ImagePreprocessor, PreparedImage
from deepfake_serving.variants import Variant, get_variant

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class Limits:
    """How far a reduced-precision graph may stray from fp32 on the held-out faces (docs/engines.md)."""

    max_abs_delta: float = 0.05
    mean_abs_delta: float = 0.01
    max_label_flip_ratio: float = 0.01  # at the variant's threshold
    min_rank_correlation: float = 0.98  # Spearman, over all faces and checkpoints
    # Ranks are judged only where fp32's answers spread wider than this: an untrained network answers
    # (nearly) the same for every face, and its ranking is rounding noise.
    min_spread_for_ranks: float = 1e-3


LIMITS = Limits()


class QuantizationRefused(CheckpointError):
    """The reduced-precision graph breached a limit, or the folders gave nothing to measure with."""


def image_files(folder: str | Path, role: str) -> list[Path]:
    """The images under ``folder``: regular files only (a FIFO or a device would block the build forever;
    a link is followed only to a regular file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QuantizationRefused(f"{role} folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise QuantizationRefused(f"{role} folder {folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def _faces(images, variant: Variant) -> list[np.ndarray]:
    stage = ImagePreprocessor(variant)
    crops = []
    for image in images:
        (item,) = stage.prepare([image])
        if isinstance(item, PreparedImage) and item.source == "mtcnn":
            crops.extend(item.crops)
    return crops


def folder_faces(folder: str | Path, variant: Variant, role: str) -> list[np.ndarray]:
    """Model-ready face crops of every image under ``folder`` (the serving face stage's)."""
    paths = image_files(folder, role)
    crops = _faces((path.read_bytes() for path in paths), variant)
    if not crops:
        raise QuantizationRefused(f"{role} folder {folder}: no face found in its {len(paths)} images")
    return crops


@lru_cache(maxsize=8)
def _sample_faces(variant_name: str) -> list[np.ndarray]:
    from deepfake_serving.media.samples import holdout_images

    return _faces(holdout_images(), get_variant(variant_name))


def holdout_faces(folder: str | Path | None, variant: Variant) -> list[np.ndarray]:
    """The held-out faces of ``folder``, or without one the built-in sample faces (found once per face rule)."""
    return folder_faces(folder, variant, "held-out") if folder else _sample_faces(variant.name)


@dataclass(frozen=True)
class Agreement:
    faces: int
    max_abs_delta: float
    mean_abs_delta: float
    label_flips: int
    fp32_spread: float  # max - min of fp32's P(fake)
    rank_correlation: float | None  # None: fp32's answers spread too little to rank (Limits.min_spread_for_ranks)

    def breaches(self, limits: Limits) -> list[str]:
        found = []
        if self.max_abs_delta > limits.max_abs_delta:
            found.append(f"max |Δp| {self.max_abs_delta:.4f} > {limits.max_abs_delta}")
        if self.mean_abs_delta > limits.mean_abs_delta:
            found.append(f"mean |Δp| {self.mean_abs_delta:.4f} > {limits.mean_abs_delta}")
        if self.label_flips > limits.max_label_flip_ratio * self.faces:
            found.append(f"{self.label_flips} label flips in {self.faces} faces > {limits.max_label_flip_ratio:.0%}")
        rho = self.rank_correlation
        if rho is not None and not rho >= limits.min_rank_correlation:  # NaN fails too
            found.append(f"rank correlation {rho:.4f} < {limits.min_rank_correlation}")
        return found


def agreement(fp32: np.ndarray, reduced: np.ndarray, threshold: float, limits: Limits = LIMITS) -> Agreement:
    """fp32 against reduced-precision P(fake), both (faces, checkpoints)."""
    from scipy.stats import spearmanr

    delta = np.abs(fp32 - reduced)
    spread = float(np.ptp(fp32)) if fp32.size else 0.0
    if spread <= limits.min_spread_for_ranks or fp32.size < 2:
        rho = None
    else:  # a constant reduced answer has no ranking: NaN, refused
        rho = float("nan") if np.ptp(reduced) == 0 else float(spearmanr(fp32.ravel(), reduced.ravel()).statistic)
    return Agreement(int(fp32.shape[0]), float(delta.max()), float(delta.mean()),
                     int(((fp32 > threshold) != (reduced > threshold)).sum()), spread, rho)


class _Reader:
    """ONNX Runtime's CalibrationDataReader over normalised face batches."""

    def __init__(self, input_name: str, faces: np.ndarray):
        self.batches = iter([{input_name: faces[i:i + CALIBRATION_BATCH]}
                             for i in range(0, len(faces), CALIBRATION_BATCH)])

    def get_next(self):
        return next(self.batches, None)


def _write_int8(graph: Path, target: Path, variant: Variant, calibration: str | Path) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = variant.preprocessing
    faces = pre.tensor(folder_faces(calibration, variant, "calibration"))
    prepared = target.with_suffix(".pre.onnx")
    quant_pre_process(str(graph), str(prepared), skip_symbolic_shape=True)
    reader = type("FaceReader", (_Reader, CalibrationDataReader), {})("faces", faces)
    try:
        quantize_static(str(prepared), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)
    return {"method": "onnxruntime static QDQ, per-channel, MinMax", "calibration_faces": len(faces)}


def _write_fp16(graph: Path, target: Path) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(graph)), keep_io_types=True), str(target))
    return {"method": "onnxruntime.transformers float16 conversion, float32 inputs and outputs"}


def _write_bf16(graph: Path, target: Path) -> dict:
    import openvino as ov

    shutil.copyfile(graph, target)
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    # Without bf16 units OpenVINO keeps f32: the proof below then measured f32, which the record says.
    return {"method": "OpenVINO CPU, INFERENCE_PRECISION_HINT bf16", "measured_with_bf16_units": "BF16" in capabilities}


def _scores(path: Path, faces: np.ndarray, precision: str) -> np.ndarray:
    data = path.read_bytes()
    engine = "openvino" if precision == "bf16" else "onnxruntime"
    graph = graph_runtime(engine, data, path.name, hashlib.sha256(data).hexdigest(), precision=precision)
    return np.concatenate([graph.run(faces[i:i + 16]) for i in range(0, len(faces), 16)])


def reduce_precision(mode: str, graph: Path, target: Path, variant: Variant, calibration: str | Path | None,
                     holdout: str | Path | None, limits: Limits | None = None) -> dict:
    """Write ``target``, the ``mode`` twin of the fp32 ``graph``, and return the manifest's
    ``quantization`` record; raise QuantizationRefused (writing nothing) when the proof fails."""
    pre = variant.preprocessing
    faces = pre.tensor(holdout_faces(holdout, variant))
    if mode == "int8":
        if calibration is None:
            raise QuantizationRefused("--quantize int8 needs --calibration DIR")
        record = _write_int8(graph, target, variant, calibration)
    else:
        record = _write_fp16(graph, target) if mode == "fp16" else _write_bf16(graph, target)
    limits = limits or LIMITS
    measured = agreement(_scores(graph, faces, "fp32"), _scores(target, faces, mode), variant.threshold, limits)
    breaches = measured.breaches(limits)
    if breaches:
        target.unlink(missing_ok=True)
        raise QuantizationRefused(f"{mode} refused: on {measured.faces} held-out faces " + "; ".join(breaches))
    held_out = str(holdout) if holdout else "built-in sample faces (deepfake_serving.media.samples.holdout_images)"
    return {"mode": mode, **record, "holdout": held_out, "agreement": asdict(measured), "limits": asdict(limits)}


def check_options(quantize: str | None, calibration, holdout, engine: str) -> None:
    if quantize is None:
        return
    engine = decide(engine, quantize).engine
    if quantize not in REDUCED_PRECISIONS:
        raise ValueError(f"unknown quantization {quantize!r}; known: {', '.join(REDUCED_PRECISIONS)}")
    if engine == "torch":
        raise QuantizationRefused(f"--quantize {quantize} makes a graph; the torch engine runs the fp32 weights")
    if quantize == "bf16" and engine != "openvino":
        raise QuantizationRefused("--quantize bf16 is OpenVINO's inference precision: archive with --engine openvino")
    if quantize == "int8" and not calibration:
        raise QuantizationRefused("--quantize int8 needs --calibration DIR (face images to calibrate on)")
    if holdout:
        image_files(holdout, "held-out")
    if calibration:
        image_files(calibration, "calibration")
