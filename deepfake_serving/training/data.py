"""Labelled data for training and evaluation: the files (a folder with Real/ and Fake/, seed 003's layout,
or a CSV of paths and labels), their faces cut by the serving face stage (the crops the server will see),
cached on disk by content, and a split by source file (no frames of one video on both sides)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
import stat
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from deepfake_serving.core.errors import RequestError
from deepfake_serving.evaluation.metrics import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from deepfake_serving.faces.detector import FaceDetector, check_detectable
from deepfake_serving.media.image import ImageLimits
from deepfake_serving.media.video import Sampling, VideoLimits, VideoStream
from deepfake_serving.pipeline.image import ImagePreprocessor
from deepfake_serving.training.sbi import self_blend
from deepfake_serving.variants import Variant

LABELS = {"real": 0, "fake": 1, "0": 0, "1": 1}
CACHE_FORMAT = 1


class DataError(ValueError):
    """Labelled data that cannot be trained or evaluated on (one line for the command line)."""


@dataclass(frozen=True)
class Source:
    path: Path
    label: int  # 1 fake, 0 real

    @property
    def video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class Face:
    """One face: its cached crop (read when a batch needs it, so memory holds batches, not datasets)."""

    source: str  # the file, as the data names it
    label: int
    frame: int | None  # a video's frame index; None for an image
    path: Path  # the crop (PNG, HxWx3 RGB at the variant's input size)
    blended: bool = False  # a self-blended fake made from this real crop (training.sbi)

    def pixels(self, rng: np.random.Generator | None = None) -> np.ndarray:
        crop = np.array(Image.open(self.path).convert("RGB"))
        if not self.blended:
            return crop
        return self_blend(crop, rng if rng is not None else np.random.default_rng(zlib.crc32(str(self.path).encode())))

    def self_blended(self) -> "Face":
        return Face(f"{self.source} (self-blended)", 1, self.frame, self.path, blended=True)


def discover(data: str | Path, classes: tuple[int, ...] = (0, 1)) -> tuple[list[Source], list[tuple[str, str]]]:
    """(labelled files, skipped (file, why)). A folder: every file under its Real/ and Fake/ (any case);
    a .csv: rows of ``path,label`` (label real/fake or 0/1; paths relative to the CSV's folder).
    ``classes``: the ones that must be present (Real alone when fakes are synthesised)."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data} does not exist")
    pairs: list[tuple[Path, int]] = []
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise DataError(f"{data}: give a folder with Real/ and Fake/, or a .csv of path,label rows")
        with open(data, newline="") as handle:
            for i, row in enumerate(csv.reader(handle)):
                if not row or (i == 0 and row[0].strip().lower() == "path"):
                    continue
                if len(row) < 2 or row[1].strip().lower() not in LABELS:
                    raise DataError(f"{data}, row {i + 1}: expected path,label with label real/fake or 0/1")
                path = Path(row[0].strip())
                pairs.append((path if path.is_absolute() else data.parent / path, LABELS[row[1].strip().lower()]))
    else:
        for child in sorted(data.iterdir()):
            label = LABELS.get(child.name.lower())
            if child.is_dir() and label is not None and child.name.lower() in ("real", "fake"):
                pairs += [(f, label) for f in sorted(child.rglob("*")) if f.is_file() and not f.name.startswith(".")]
    sources, skipped = [], []
    for path, label in pairs:
        suffix = path.suffix.lower()
        if not path.is_file():
            skipped.append((str(path), "missing"))
        elif suffix not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
            skipped.append((str(path), f"not an image or video ({suffix or 'no suffix'})"))
        else:
            sources.append(Source(path, label))
    if not sources:
        raise DataError(f"{data}: no images or videos (a folder needs Real/ and Fake/ subfolders)")
    check_classes([s.label for s in sources], f"{data}", classes)
    return sources, skipped


def check_classes(labels: Iterable[int], what: str, classes: tuple[int, ...] = (0, 1)) -> None:
    present = set(labels)
    missing = [_class_name(c) for c in classes if c not in present]
    if missing:
        raise DataError(f"{what}: no {' and no '.join(missing)} files" +
                        (" (only one class)" if present else ""))


def cache_key(variant: Variant, sampling: Sampling) -> str:
    """The face stage's settings that decide the crops: two variants that cut alike share a cache."""
    settings = {"format": CACHE_FORMAT, "preprocessing": variant.preprocessing.to_dict(), "sampling": asdict(sampling)}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checked_file(path: Path, limit: int) -> None:
    """A regular file (on its resolved path) within ``limit`` bytes, by ``stat()`` before a byte is read:
    a 3 GB file named ``.jpg`` is refused at once, not read whole first. RequestError otherwise."""
    info = path.resolve().stat()
    if not stat.S_ISREG(info.st_mode):
        raise RequestError("unsupported_media", f"{path} is not a regular file")
    if info.st_size > limit:
        raise RequestError("body_too_large", f"{path} is {info.st_size} bytes; the limit is {limit}")


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


class FaceExtractor:
    """The serving face stage over files: an image's faces as the image model cuts them, a video's sampled
    frames' faces as the video model cuts them (``sampling``, the serving default). Crops are cached under
    ``cache/<settings>/<sha256 of the file>/`` (PNG, lossless) with a ``faces.json`` of their frames; a cache
    folder this creates is 0700 (the crops are people's faces)."""

    def __init__(self, variant: Variant, cache: str | Path, sampling: Sampling = Sampling(), threads: int | None = None):
        self.variant = variant
        self.sampling = sampling
        if not Path(cache).exists():  # faces of people: a cache only its owner can enter
            Path(cache).mkdir(mode=0o700, parents=True)
        self.root = Path(cache) / cache_key(variant, sampling)
        self.images = ImagePreprocessor(variant, threads=threads)
        self.detector = FaceDetector(variant.preprocessing.faces, threads)

    def faces(self, source: Source, name: str) -> list[Face]:
        """The source's faces (none: no face found). Raises RequestError or OSError for a file that cannot
        be read or decoded."""
        checked_file(source.path, VideoLimits().max_bytes if source.video else ImageLimits().max_bytes)
        entry = self.root / _digest(source.path)
        if not (entry / "faces.json").is_file():
            cut = self._cut_video(source.path) if source.video else self._cut_image(source.path)
            staging = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
            staging.mkdir(parents=True, exist_ok=True)
            for i, (_, crop) in enumerate(cut):
                Image.fromarray(crop).save(staging / f"{i}.png")
            (staging / "faces.json").write_text(json.dumps([frame for frame, _ in cut]))
            try:
                staging.rename(entry)  # whole or not at all: an interrupted extraction leaves no half entry
            except OSError:  # another process cached it meanwhile
                shutil.rmtree(staging, ignore_errors=True)
        frames = json.loads((entry / "faces.json").read_text())
        return [Face(name, source.label, frame, entry / f"{i}.png") for i, frame in enumerate(frames)]

    def _cut_image(self, path: Path) -> list[tuple[int | None, np.ndarray]]:
        (prepared,) = self.images.prepare([path.read_bytes()])
        if isinstance(prepared, RequestError):
            raise prepared
        return [(None, crop) for crop in prepared.crops]

    def _cut_video(self, path: Path) -> list[tuple[int | None, np.ndarray]]:
        pre = self.variant.preprocessing
        scale = pre.faces.frame_detect_scale
        cut: list[tuple[int | None, np.ndarray]] = []
        with VideoStream(path, self.sampling, VideoLimits()) as video:
            for frame in video.frames():
                check_detectable(frame.image.shape, scale, pre.faces, "frame_too_small", f"frame {frame.index}")
                found = self.detector.find(frame.image, scale)
                _, (crops,) = found.member_crops([pre])
                cut += [(frame.index, crop) for crop in crops]
                found.release()
        return cut


@dataclass
class Extracted:
    faces: list[Face]
    unreadable: list[tuple[str, str]]  # (file, why)
    no_face: list[str]


def source_name(source: Source, data: Path) -> str:
    """How reports name a file: relative to the data folder (or the CSV's folder) when inside it."""
    root = data if data.is_dir() else data.parent
    return str(source.path.relative_to(root)) if source.path.is_relative_to(root) else str(source.path)


def extract(sources: Sequence[Source], extractor: FaceExtractor, data: Path,
            progress: Callable[[int, int], None] | None = None) -> Extracted:
    """Every source's faces; a file that fails is listed, not fatal."""
    result = Extracted([], [], [])
    for i, source in enumerate(sources):
        name = source_name(source, data)
        try:
            faces = extractor.faces(source, name)
        except RequestError as err:
            result.unreadable.append((name, f"{err.code}: {err.message}"))
        except (OSError, ValueError) as err:
            result.unreadable.append((name, f"{type(err).__name__}: {err}"))
        else:
            result.faces += faces
            if not faces:
                result.no_face.append(name)
        if progress:
            progress(i + 1, len(sources))
    return result


def source_group(source: str) -> str:
    """The files that go to one side of the split together: a file's name without its folder and extension,
    so ``Real/x.mp4`` and ``Fake/x.mp4`` (a fake named after the real it was made from, as self-blends are)
    stay together; apart, a model that learnt who is in ``x`` would answer the opposite on its fake."""
    return Path(source).stem


def split_by_source(faces: Sequence[Face], validation: float = 0.2, seed: int = 0) -> tuple[list[Face], list[Face]]:
    """(train, validation): whole source files (and the files sharing their name, ``source_group``) to one
    side; groups go to validation, in an order chosen by ``seed``, until each class has ``validation`` of its
    files there (at least one)."""
    files: dict[int, set[str]] = {}
    groups: dict[str, set[tuple[int, str]]] = {}
    for face in faces:
        files.setdefault(face.label, set()).add(face.source)
        groups.setdefault(source_group(face.source), set()).add((face.label, face.source))
    for label, names in sorted(files.items()):
        if len(names) < 2:
            raise DataError(f"{_class_name(label)} has faces from {len(names)} file(s): the split by file needs "
                            "at least 2 per class")
    wanted = {label: max(1, round(len(names) * validation)) for label, names in files.items()}
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    held: set[str] = set()
    for group in order:
        if any(wanted[label] > 0 for label, _ in groups[group]):
            for label, source in groups[group]:
                held.add(source)
                wanted[label] -= 1
    train = [f for f in faces if f.source not in held]
    missing = set(files) - {f.label for f in train}
    if missing:
        raise DataError(f"{', '.join(_class_name(label) for label in sorted(missing))} has no file left to train "
                        "on once its name-sharing files went to validation: add files or lower --validation")
    return train, [f for f in faces if f.source in held]


def _class_name(label: int) -> str:
    return "Fake" if label else "Real"
