"""Decoding untrusted video bytes with PyAV (FFmpeg) and choosing the frames to analyse."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import av
import numpy as np

from .errors import InputError
from .imaging import looks_like_video

SAMPLING_STRATEGIES = ("linspace", "every_nth", "all")


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int = 100 * 1024 * 1024
    max_duration_s: float = 600.0
    max_frames_analyzed: int = 300
    max_pixels: int = 4096 * 2304  # 4K UHD and DCI 4K pass
    max_frames_per_sample: int = 300


@dataclass(frozen=True)
class Sampling:
    """Which frames to analyse: DFDC's 32 evenly spaced (default), every Nth (seed 004), or all (seed 001)."""

    strategy: str = "linspace"
    frames: int = 32
    every: int = 10

    def validate(self, limits: VideoLimits) -> "Sampling":
        if self.strategy not in SAMPLING_STRATEGIES:
            raise InputError(400, "bad_sampling", f"sampling must be one of {', '.join(SAMPLING_STRATEGIES)}")
        if self.strategy == "linspace" and not 1 <= self.frames <= limits.max_frames_analyzed:
            raise InputError(400, "bad_sampling", f"frames must be between 1 and {limits.max_frames_analyzed}")
        if self.strategy == "every_nth" and self.every < 1:
            raise InputError(400, "bad_sampling", "every must be at least 1")
        return self

    def indices(self, frame_count: int) -> list[int]:
        """Frame indices in order, without repeats.

        linspace follows the DFDC reference: ``linspace(0, n - 1, 32)`` truncated to
        int. The reference keeps repeated indices for clips shorter than 32 frames
        and then reads only the first frame (its read loop never matches a repeat);
        here repeats are dropped and every distinct frame is read.
        """
        if frame_count <= 0:
            return []
        if self.strategy == "linspace":
            idx = np.linspace(0, frame_count - 1, self.frames, endpoint=True).astype(int)
            return sorted(set(int(i) for i in idx))
        if self.strategy == "every_nth":
            return list(range(0, frame_count, self.every))
        return list(range(frame_count))


@dataclass
class DecodedVideo:
    frames: list[np.ndarray]  # upright RGB uint8, one per sampled index that could be decoded
    indices: list[int]
    timestamps: list[float]  # seconds, from each frame's own pts (correct for variable frame rate)
    frame_count: int
    fps: float
    duration_s: float
    width: int
    height: int
    rotation: int
    notes: list[str] = field(default_factory=list)


def _open(data: bytes):
    if not data:
        raise InputError(400, "empty_body", "the request body is empty; send the video bytes as the body")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.error.FFmpegError as exc:
        code = 415 if not looks_like_video(data) else 400
        name = "unsupported_media" if code == 415 else "corrupt_video"
        raise InputError(code, name, f"the body is not a readable video (MP4, MOV, AVI, WebM, MKV): {exc}") from None
    if container.format.name.split(",")[0] in ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe",
                                                 "tiff_pipe", "gif", "gif_pipe"):
        container.close()
        raise InputError(415, "image_sent_to_video_endpoint",
                         "this endpoint analyses videos; send still images to the image model")
    return container


def _frame_count(container, stream) -> int:
    if stream.frames:
        return int(stream.frames)
    # Matroska/WebM and some AVIs do not store a count: count packets without decoding.
    count = sum(1 for packet in container.demux(stream) if packet.size)
    container.seek(0)
    return count


def decode_video(data: bytes, sampling: Sampling = Sampling(), limits: VideoLimits = VideoLimits()) -> DecodedVideo:
    """Decode the sampled frames of a video, or raise InputError saying what is wrong with it."""
    if len(data) > limits.max_bytes:
        raise InputError(413, "body_too_large", f"the video is {len(data)} bytes; the limit is {limits.max_bytes}")
    sampling.validate(limits)
    container = _open(data)
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["nothing"]
            raise InputError(422, "no_video_stream", f"the file has no video stream (it holds {', '.join(kinds)})")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > limits.max_pixels:
            raise InputError(413, "frame_too_large", f"frames are {width}x{height}; the limit is {limits.max_pixels} pixels")
        duration = float(stream.duration * stream.time_base) if stream.duration else (container.duration or 0) / 1e6
        if duration > limits.max_duration_s:
            raise InputError(413, "video_too_long", f"the video lasts {duration:.1f} s; the limit is {limits.max_duration_s:.0f} s")
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frame_count = _frame_count(container, stream)
        wanted = sampling.indices(frame_count)
        if not wanted:
            raise InputError(422, "empty_video", "the video stream holds no frames")
        if len(wanted) > limits.max_frames_analyzed:
            raise InputError(413, "too_many_frames", f"the sampling selects {len(wanted)} frames; the limit is "
                             f"{limits.max_frames_analyzed} (use sampling=linspace or a larger every=)")
        video = _decode_frames(container, stream, wanted, frame_count, fps, duration, width, height)
        announced = round(duration * fps)
        if frame_count < announced - 1:
            video.notes.append(f"the stream holds {frame_count} frames but its header announces about {announced} "
                               f"({duration:.2f} s at {fps:g} fps): the file looks truncated")
        return video
    finally:
        container.close()


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply display-matrix rotation (degrees counter-clockwise, as FFmpeg reports it)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


def _decode_frames(container, stream, wanted, frame_count, fps, duration, width, height) -> DecodedVideo:
    stream.thread_type = "AUTO"
    wanted_set, last = set(wanted), wanted[-1]
    frames, indices, timestamps, notes = [], [], [], []
    rotation = 0
    index = -1
    try:
        for frame in container.decode(stream):
            index += 1
            if index in wanted_set:
                rotation = int(getattr(frame, "rotation", 0) or 0)
                frames.append(_upright(frame.to_ndarray(format="rgb24"), rotation))
                indices.append(index)
                timestamps.append(float(frame.time) if frame.time is not None else index / fps if fps else 0.0)
            if index >= last:
                break
    except av.error.FFmpegError as exc:
        if not frames:
            raise InputError(400, "corrupt_video", f"no frame of the video could be decoded: {exc}") from None
        notes.append(f"decoding stopped at frame {index + 1} of {frame_count}: {exc}")
    if not frames:
        raise InputError(422, "empty_video", "no frame of the video could be decoded")
    if index + 1 < frame_count and not notes and indices[-1] < last:
        notes.append(f"the stream ended after {index + 1} of {frame_count} announced frames")
    h, w = frames[0].shape[:2]
    return DecodedVideo(frames, indices, timestamps, frame_count, fps, duration, w, h, rotation, notes)


def iter_frames(data: bytes):
    """Every frame of a video, upright, in order (for rendering; nothing is kept in memory)."""
    container = _open(data)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield _upright(frame.to_ndarray(format="rgb24"), int(getattr(frame, "rotation", 0) or 0)), \
                float(stream.average_rate or 25)
    finally:
        container.close()
