"""A small labelled set for the training tests: real face photographs and encoded clips as Real, their
self-blended versions (training.sbi, applied around each detected face) as Fake."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepfake_serving.faces.detector import FaceDetector
from deepfake_serving.media import samples
from deepfake_serving.media.image import decode_image
from deepfake_serving.training.sbi import self_blend
from deepfake_serving.variants import FaceSettings

STRENGTH = 2.0  # cruder fakes than the paper's: a CI-sized run must learn them in a few epochs


def blend_faces(image: np.ndarray, detector: FaceDetector, rng: np.random.Generator) -> np.ndarray:
    """The image with every detected face self-blended in a square around it."""
    out = image.copy()
    for face in detector.find(image, 1.0).faces:
        x1, y1, x2, y2 = face.box
        pad = (x2 - x1) // 4
        x1, y1 = max(0, x1 - pad), max(0, y1 - pad)
        x2, y2 = min(image.shape[1], x2 + pad), min(image.shape[0], y2 + pad)
        out[y1:y2, x1:x2] = self_blend(np.ascontiguousarray(image[y1:y2, x1:x2]), rng, STRENGTH)
    return out


def write_training_set(root: Path, photos: int = 16, clips: int = 2, frames: int = 8, seed: int = 0) -> Path:
    """``root/Real`` and ``root/Fake``: ``photos`` photographs and ``clips`` clips each."""
    rng = np.random.default_rng(seed)
    detector = FaceDetector(FaceSettings())
    (root / "Real").mkdir(parents=True)
    (root / "Fake").mkdir()
    for i, data in enumerate(samples.holdout_images(photos, seed=seed)):
        (root / "Real" / f"photo{i}.jpg").write_bytes(data)
        fake = blend_faces(decode_image(data), detector, rng)
        (root / "Fake" / f"photo{i}.jpg").write_bytes(samples.encode(fake, quality=90))
    for i in range(clips):
        shots = samples.moving_face_frames(frames, (480, 360), faces=1 + i % 2)
        shots = [np.clip(f * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8) for f in shots]
        (root / "Real" / f"clip{i}.mp4").write_bytes(samples.encode_video(shots))
        clip_rng = np.random.default_rng(seed * 1000 + i)
        state = clip_rng.bit_generator.state
        blended = []
        for frame in shots:  # the same blend on every frame of a clip, as a face swap would be
            clip_rng.bit_generator.state = state
            blended.append(blend_faces(frame, detector, clip_rng))
        (root / "Fake" / f"clip{i}.mp4").write_bytes(samples.encode_video(blended))
    return root
