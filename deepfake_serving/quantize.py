"""Optional int8 graphs: ONNX Runtime static quantization calibrated on the user's face crops, allowed
only with proof of agreement with fp32 on a held-out set the user supplies.

Both folders hold photographs; their faces are found and cropped by the same face stage that serves
the variant. The agreement (every checkpoint's P(fake) on every held-out face) goes into the
manifest; an int8 graph that breaches ``LIMITS`` is refused and nothing is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .crops import to_array
from .errors import CheckpointError
from .variants import Variant

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class Limits:
    """How far an int8 graph may stray from fp32 on the held-out faces (README: Engines)."""

    max_abs_delta: float = 0.05
    mean_abs_delta: float = 0.01
    max_label_flip_ratio: float = 0.01  # at the variant's threshold
    min_rank_correlation: float = 0.98  # Spearman, over all faces and checkpoints


LIMITS = Limits()


class QuantizationRefused(CheckpointError):
    """The int8 graph breached a limit, or the folders gave nothing to measure with."""


def folder_faces(folder: str | Path, variant: Variant, role: str) -> list[np.ndarray]:
    """Model-ready face crops of every image under ``folder`` (the serving face stage's)."""
    from .pipeline import ImageFaceStage, PreparedImage

    folder = Path(folder)
    if not folder.is_dir():
        raise QuantizationRefused(f"{role} folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    stage = ImageFaceStage(variant)
    crops = []
    for path in paths:
        (item,) = stage.prepare([path.read_bytes()])
        if isinstance(item, PreparedImage) and item.source == "mtcnn":
            crops.extend(item.crops)
    if not crops:
        raise QuantizationRefused(f"{role} folder {folder}: no face found in its {len(paths)} images")
    return crops


@dataclass(frozen=True)
class Agreement:
    faces: int
    max_abs_delta: float
    mean_abs_delta: float
    label_flips: int
    rank_correlation: float

    def breaches(self, limits: Limits) -> list[str]:
        found = []
        if self.max_abs_delta > limits.max_abs_delta:
            found.append(f"max |Δp| {self.max_abs_delta:.4f} > {limits.max_abs_delta}")
        if self.mean_abs_delta > limits.mean_abs_delta:
            found.append(f"mean |Δp| {self.mean_abs_delta:.4f} > {limits.mean_abs_delta}")
        if self.label_flips > limits.max_label_flip_ratio * self.faces:
            found.append(f"{self.label_flips} label flips in {self.faces} faces > {limits.max_label_flip_ratio:.0%}")
        if not self.rank_correlation >= limits.min_rank_correlation:  # NaN fails too
            found.append(f"rank correlation {self.rank_correlation:.4f} < {limits.min_rank_correlation}")
        return found


def agreement(fp32: np.ndarray, int8: np.ndarray, threshold: float) -> Agreement:
    """fp32 against int8 P(fake), both (faces, checkpoints)."""
    from scipy.stats import spearmanr

    delta = np.abs(fp32 - int8)
    constant = fp32.size < 2 or np.ptp(fp32) == 0 or np.ptp(int8) == 0  # no ranking to compare
    rho = float("nan") if constant else spearmanr(fp32.ravel(), int8.ravel()).statistic
    return Agreement(int(fp32.shape[0]), float(delta.max()), float(delta.mean()),
                     int(((fp32 > threshold) != (int8 > threshold)).sum()), float(rho))


class _Reader:
    """ONNX Runtime's CalibrationDataReader over normalised face batches."""

    def __init__(self, input_name: str, faces: np.ndarray):
        self.batches = iter([{input_name: faces[i:i + CALIBRATION_BATCH]}
                             for i in range(0, len(faces), CALIBRATION_BATCH)])

    def get_next(self):
        return next(self.batches, None)


def quantize_int8(graph: Path, target: Path, variant: Variant, calibration: str | Path, holdout: str | Path,
                  limits: Limits | None = None) -> dict:
    """Write ``target``, the int8 twin of ``graph``, and return the manifest's ``quantization`` record;
    raise QuantizationRefused (writing nothing) when the proof fails."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = variant.preprocessing
    calibration_faces = to_array(folder_faces(calibration, variant, "calibration"), pre.mean, pre.std)
    holdout_faces = to_array(folder_faces(holdout, variant, "held-out"), pre.mean, pre.std)
    prepared = target.with_suffix(".pre.onnx")
    quant_pre_process(str(graph), str(prepared), skip_symbolic_shape=True)
    reader = type("FaceReader", (_Reader, CalibrationDataReader), {})("faces", calibration_faces)
    try:
        quantize_static(str(prepared), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)
    runs = []
    for path in (graph, target):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runs.append(np.concatenate([session.run(None, {"faces": holdout_faces[i:i + 16]})[0]
                                    for i in range(0, len(holdout_faces), 16)]))
    limits = limits or LIMITS
    measured = agreement(runs[0], runs[1], variant.threshold)
    breaches = measured.breaches(limits)
    if breaches:
        target.unlink(missing_ok=True)
        raise QuantizationRefused(f"int8 refused: on {measured.faces} held-out faces " + "; ".join(breaches))
    return {"mode": "int8", "method": "onnxruntime static QDQ, per-channel, MinMax",
            "calibration_faces": len(calibration_faces), "agreement": asdict(measured), "limits": asdict(limits)}


def check_options(quantize: str | None, calibration, holdout) -> None:
    if quantize is None:
        return
    if quantize != "int8":
        raise ValueError(f"unknown quantization {quantize!r}; known: int8")
    if not calibration or not holdout:
        raise QuantizationRefused("--quantize int8 needs --calibration DIR (face images to calibrate on) and "
                                  "--holdout DIR (other face images to prove agreement on)")
