"""Real sample media for demos, tests and benchmarks. The astronaut (Eileen Collins, NASA, public domain)
ships with the package, so the held-out faces of a reduced-precision proof need nothing beyond the
``build`` extra; the other photographs come from scikit-image (the ``samples`` extra)."""

from __future__ import annotations

import io
from functools import lru_cache
from importlib.resources import files

import numpy as np
from PIL import Image

# Where the astronaut's (Eileen Collins') face lies in scikit-image's 512×512 photograph.
ASTRONAUT_FACE_REGION = (150, 30, 300, 200)  # x1, y1, x2, y2


@lru_cache(maxsize=None)
def astronaut() -> np.ndarray:
    """scikit-image's ``data.astronaut()``, pixel for pixel (a lossless copy in the package's assets)."""
    with (files("deepfake_serving") / "assets" / "samples" / "astronaut.png").open("rb") as handle:
        return np.asarray(Image.open(handle).convert("RGB"))


def two_faces() -> np.ndarray:
    """Two real faces side by side (the astronaut, and her mirror image)."""
    face = astronaut()
    return np.ascontiguousarray(np.hstack([face, face[:, ::-1]]))


def no_face() -> np.ndarray:
    from skimage import data

    return data.coffee()


def encode(image: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **options)
    return buf.getvalue()


def astronaut_jpeg() -> bytes:
    return encode(astronaut(), quality=95)


# -- videos made from the real photographs ------------------------------------------------
VIDEO_CODECS = {"mp4": "libx264", "mov": "libx264", "mkv": "libx264", "avi": "mpeg4", "webm": "libvpx", "ts": "libx264"}


def _place(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> None:
    h, w = image.shape[:2]
    canvas[y:y + h, x:x + w] = image[: canvas.shape[0] - y, : canvas.shape[1] - x]


def _resized(image: np.ndarray, height: int) -> np.ndarray:
    width = round(image.shape[1] * height / image.shape[0])
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))


def moving_face_frames(count: int = 60, size: tuple[int, int] = (640, 480), faces: int = 1,
                       no_face_between: tuple[int, int] | None = None) -> list[np.ndarray]:
    """The astronaut drifting across the frame and growing/shrinking; ``faces=2`` adds her mirror image;
    frames in ``no_face_between`` (start, stop) show scikit-image's coffee cup instead."""
    width, height = size
    coffee = _resized(no_face(), height) if no_face_between else None  # scikit-image only when asked for
    frames = []
    for i in range(count):
        canvas = np.full((height, width, 3), 40, dtype=np.uint8)
        if coffee is not None and no_face_between and no_face_between[0] <= i < no_face_between[1]:
            _place(canvas, coffee[:, :width], 0, 0)
            frames.append(canvas)
            continue
        phase = i / max(1, count - 1)
        side = int(height * (0.55 + 0.25 * np.sin(2 * np.pi * phase)))  # scaling
        face = _resized(astronaut(), side)
        slot = width // faces
        for k in range(faces):
            image = face if k == 0 else face[:, ::-1]
            x = k * slot + int((slot - side) * (0.5 + 0.4 * np.sin(2 * np.pi * phase + k)))  # moving
            _place(canvas, image, max(0, x), (height - side) // 2)
        frames.append(canvas)
    return frames


def encode_video(frames: list[np.ndarray], fmt: str = "mp4", fps: float = 25, timestamps: list[float] | None = None,
                 codec: str | None = None) -> bytes:
    """Encode RGB frames with FFmpeg (PyAV). ``timestamps`` (seconds) gives variable frame rate."""
    import fractions

    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format={"mkv": "matroska", "mov": "mov", "ts": "mpegts"}.get(fmt, fmt)) as container:
        stream = container.add_stream(codec or VIDEO_CODECS[fmt], rate=fractions.Fraction(fps).limit_denominator(1000))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        time_base = fractions.Fraction(1, 1000)
        if timestamps is not None:
            stream.codec_context.time_base = time_base
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if timestamps is not None:
                frame.pts, frame.time_base = int(timestamps[i] * 1000), time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_samples(directory) -> dict[str, str]:
    """The five-minute path's media: a face photograph, a photograph with no face, and a 2-second H.264
    clip of a moving face (what ``deepfake-serving samples DIR`` writes)."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {"face.jpg": astronaut_jpeg(), "no_face.jpg": encode(no_face(), quality=90),
             "clip.mp4": encode_video(moving_face_frames(50), "mp4")}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return {name: str(directory / name) for name in files}


HOLDOUT_IMAGES = 24


def holdout_images(count: int = HOLDOUT_IMAGES, seed: int = 0) -> list[bytes]:
    """Held-out photographs for the reduced-precision proof when the user gives none (docs/engines.md): the
    real face of the sample photographs at varied sizes, places, mirror images, exposures, noise and JPEG
    qualities, one or two faces each — one person, so a proof on these speaks for the arithmetic, not
    for the user's data."""
    rng = np.random.default_rng(seed)
    kinds = [(size, faces) for size in ((640, 480), (800, 600), (480, 640)) for faces in (1, 2)]
    per_kind = -(-count // len(kinds))
    frames = [frame for size, faces in kinds for frame in moving_face_frames(per_kind, size, faces=faces)]
    images = []
    for frame in frames[:: max(1, len(frames) // count)][:count]:
        frame = frame * rng.uniform(0.6, 1.3) + rng.uniform(-30, 30) + rng.normal(0, rng.uniform(0, 6), frame.shape)
        images.append(encode(np.clip(frame, 0, 255).astype(np.uint8), quality=int(rng.integers(60, 96))))
    return images
