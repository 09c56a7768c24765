"""Decoding untrusted video bytes with PyAV (FFmpeg) and choosing the frames to analyse."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping

import av
import numpy as np

from deepfake_serving.core.errors import RequestError
from deepfake_serving.core.formats import ACCEPTED_VIDEOS, image_format, video_container
from deepfake_serving.core.limits import DEFAULT_FRAMES

SAMPLING_STRATEGIES = ("linspace", "every_nth", "all")


@dataclass(frozen=True)
class VideoLimits:
    """Bounds that hold whatever the file claims: the header is checked first (cheap refusals),
    then every decoded frame (the header may lie)."""

    max_bytes: int = 100 * 1024 * 1024
    max_duration_s: float = 600.0
    max_frames_analyzed: int = 300
    max_pixels: int = 4096 * 2304  # per frame; 4K UHD and DCI 4K pass
    # Every frame decoded counts, sampled or not: 300 4K frames are 2.65e9 pixels.
    max_decoded_pixels: int = 3_000_000_000
    # Boxes sent to MTCNN's R-net and O-net over the request (each frame takes at most 2,500: see
    # mtcnn.MAX_RNET_CANDIDATES + MAX_ONET_CANDIDATES); 300 frames of honest faces stay well below.
    max_detector_candidates: int = 150_000


@dataclass(frozen=True)
class Sampling:
    """Which frames to analyse: DFDC's 32 evenly spaced (default), every Nth (seed 004), or all (seed 001)."""

    strategy: str = "linspace"
    frames: int = DEFAULT_FRAMES
    every: int = 10

    OPTIONS = ("sampling", "frames", "every")  # the request options, as every backend and client names them

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> "Sampling":
        """From request options as they arrive (str, bytes or int; absent or None: the default), the one
        parser for TorchServe's fields and headers, Triton's input tensors and the clients' options."""
        def value(name):
            found = options.get(name)
            return found.decode("utf-8", "replace") if isinstance(found, (bytes, bytearray)) else found

        defaults = cls()
        try:
            return cls(strategy=str(value("sampling") or defaults.strategy),
                       frames=int(value("frames") if value("frames") is not None else defaults.frames),
                       every=int(value("every") if value("every") is not None else defaults.every))
        except ValueError:
            raise RequestError("bad_sampling", "frames and every must be integers") from None

    def validate(self, limits: VideoLimits) -> "Sampling":
        if self.strategy not in SAMPLING_STRATEGIES:
            raise RequestError("bad_sampling", f"sampling must be one of {', '.join(SAMPLING_STRATEGIES)}")
        if self.strategy == "linspace" and not 1 <= self.frames <= limits.max_frames_analyzed:
            raise RequestError("bad_sampling", f"frames must be between 1 and {limits.max_frames_analyzed}")
        if self.strategy == "every_nth" and self.every < 1:
            raise RequestError("bad_sampling", "every must be at least 1")
        return self

    def indices(self, frame_count: int) -> list[int]:
        """Frame indices in order, without repeats (for linspace at most ``frames`` of them).

        linspace follows the DFDC reference: ``linspace(0, n - 1, 32)`` truncated to
        int. The reference keeps repeated indices for clips shorter than 32 frames
        and then reads only the first frame (its read loop never matches a repeat);
        here repeats are dropped and every distinct frame is read.
        """
        if frame_count <= 0:
            return []
        if self.strategy == "linspace":
            idx = np.linspace(0, frame_count - 1, self.frames, endpoint=True).astype(np.int64)
            return sorted(set(int(i) for i in idx))
        return list(range(0, frame_count, self.step))

    @property
    def step(self) -> int:
        """The stride of every_nth and all (linspace has none)."""
        return self.every if self.strategy == "every_nth" else 1

    def count(self, frame_count: int) -> int:
        """How many frames ``indices`` selects, without building the list (headers can claim 2**32 frames)."""
        if frame_count <= 0:
            return 0
        if self.strategy == "linspace":
            return len(self.indices(frame_count))
        return -(-frame_count // self.step)

    def last(self, frame_count: int) -> int:
        """The last index ``indices`` selects: decoding stops there, never past the header's count."""
        if self.strategy == "linspace":
            return self.indices(frame_count)[-1]
        return (frame_count - 1) // self.step * self.step

    def selects(self, index: int, linspace_set: frozenset[int]) -> bool:
        if self.strategy == "linspace":
            return index in linspace_set
        return index % self.step == 0


@dataclass(frozen=True)
class SampledFrame:
    index: int
    timestamp: float  # seconds, from the frame's own pts (correct for variable frame rate)
    image: np.ndarray  # upright RGB uint8


@dataclass
class VideoInfo:
    frame_count: int  # from the header, or counted from packets where the container stores none
    fps: float
    duration_s: float
    planned: int  # frames the sampling selects from frame_count
    width: int = 0  # of the upright frames, once one is decoded
    height: int = 0
    rotation: int = 0
    header_size: str = ""  # what the header claims, for messages
    notes: list[str] = field(default_factory=list)


@dataclass
class DecodedVideo:
    """Every sampled frame held in memory: for tests and tools on small clips (serving streams)."""

    info: VideoInfo
    sampled: list[SampledFrame]

    @property
    def frames(self) -> list[np.ndarray]:
        return [f.image for f in self.sampled]

    @property
    def indices(self) -> list[int]:
        return [f.index for f in self.sampled]

    @property
    def timestamps(self) -> list[float]:
        return [f.timestamp for f in self.sampled]


@dataclass(frozen=True)
class VideoSource:
    """Where a clip's bytes are: in memory (a request body) or in a regular file (a job's upload, read
    by the demuxer as it goes, never whole). Both meet the same limits and budget."""

    data: bytes | None = None
    path: Path | None = None

    @classmethod
    def of(cls, source: "bytes | str | Path | VideoSource") -> "VideoSource":
        if isinstance(source, VideoSource):
            return source
        if isinstance(source, (bytes, bytearray, memoryview)):
            return cls(data=bytes(source))
        path = Path(source)
        # A FIFO or a device would block the demuxer or never end: regular files only (a link is followed).
        if not path.is_file():
            raise RequestError("unsupported_media", f"{path} is not a regular file")
        return cls(path=path)

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self._path.stat().st_size

    def head(self, n: int = 376) -> bytes:
        """The first bytes, enough for every signature in core.formats."""
        with self.open() as f:
            return f.read(n)

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data) if self.data is not None else self._path.open("rb")

    @property
    def _path(self) -> Path:
        if self.path is None:
            raise ValueError("a video source holds bytes or a path")
        return self.path


def _open(source: VideoSource, file: BinaryIO):
    """Open with the one demuxer the signature names; refuse anything else before FFmpeg sees it."""
    head = source.head()
    if not head:
        raise RequestError("empty_body", "the request body is empty; send the video bytes as the body")
    if image_format(head):
        raise RequestError("image_sent_to_video_endpoint",
                           "this endpoint analyses videos; send still images to the image model")
    container_format = video_container(head)
    if container_format is None:
        raise RequestError("unsupported_media", f"the body is not an accepted video ({ACCEPTED_VIDEOS})")
    try:
        return av.open(file, mode="r", format=container_format)
    except av.error.FFmpegError as exc:
        raise RequestError("corrupt_video", f"the {container_format} container cannot be read: {exc}") from None


def _frame_count(source: VideoSource, container, stream) -> int:
    if stream.frames:
        return int(stream.frames)
    # Matroska/WebM and some AVIs store no count: count packets without decoding (bounded by the body
    # size), on a second demuxer, so the one that decodes never has to seek back.
    with source.open() as file, av.open(file, mode="r", format=container.format.name.split(",")[0]) as counting:
        return sum(1 for packet in counting.demux(counting.streams[stream.index]) if packet.size)


class VideoStream:
    """An opened video: its header checked against the limits, then its sampled frames decoded one at a
    time (``frames()``), every decoded frame checked again, so memory follows the frames in use, not the clip."""

    def __init__(self, source: "bytes | str | Path | VideoSource", sampling: Sampling = Sampling(),
                 limits: VideoLimits = VideoLimits()):
        source = VideoSource.of(source)
        if source.size > limits.max_bytes:
            raise RequestError("body_too_large", f"the video is {source.size} bytes; the limit is {limits.max_bytes}")
        self.sampling, self.limits = sampling.validate(limits), limits
        self.file = source.open()
        try:
            self.container = _open(source, self.file)
        except BaseException:
            self.file.close()
            raise
        try:
            self.info = self._check_header(source)
        except av.error.FFmpegError as exc:
            self.close()
            raise RequestError("corrupt_video", f"the video's header cannot be read: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _check_header(self, source: VideoSource) -> VideoInfo:
        limits, container = self.limits, self.container
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            if not kinds:
                raise RequestError("corrupt_video", "the container declares no stream (a corrupt or missing index)")
            raise RequestError("no_video_stream", f"the file has no video stream (it holds {', '.join(kinds)})")
        self.stream = stream = container.streams.video[0]
        if stream.codec_context is None:
            raise RequestError("unsupported_media", "the video stream's codec is not one "
                               "this server decodes")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > limits.max_pixels:
            raise RequestError("frame_too_large", f"frames are {width}x{height}; the limit is {limits.max_pixels} pixels")
        duration = float(stream.duration * stream.time_base) if stream.duration else (container.duration or 0) / 1e6
        if duration > limits.max_duration_s:
            raise RequestError("video_too_long",
                               f"the video lasts {duration:.1f} s; the limit is {limits.max_duration_s:.0f} s")
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frame_count = _frame_count(source, container, stream)
        planned = self.sampling.count(frame_count)
        if not planned:
            raise RequestError("empty_video", "the video stream holds no frames")
        if planned > limits.max_frames_analyzed:
            raise RequestError("too_many_frames", f"the sampling selects {planned} frames; the limit is "
                               f"{limits.max_frames_analyzed} (use sampling=linspace or a larger every=)")
        return VideoInfo(frame_count, fps, duration, planned, header_size=f"{width}x{height}")

    def frames(self) -> Iterator[SampledFrame]:
        """The sampled frames, upright, in order. Raises RequestError at the first frame over a limit."""
        info, limits, sampling = self.info, self.limits, self.sampling
        linspace = frozenset(sampling.indices(info.frame_count)) if sampling.strategy == "linspace" else frozenset()
        last = sampling.last(info.frame_count)
        self.stream.thread_type = "AUTO"
        decoded_pixels, sampled, index = 0, 0, -1
        try:
            for frame in self.container.decode(self.stream):
                index += 1
                pixels = frame.width * frame.height
                if pixels > limits.max_pixels:
                    raise RequestError("frame_too_large", f"frame {index} is {frame.width}x{frame.height}; the limit "
                                       f"is {limits.max_pixels} pixels (the header said {info.header_size})")
                decoded_pixels += pixels
                if decoded_pixels > limits.max_decoded_pixels:
                    raise RequestError("decode_budget_exceeded", f"decoding frame {index} passes the budget of "
                                       f"{limits.max_decoded_pixels} decoded pixels per request")
                timestamp = float(frame.time) if frame.time is not None else index / info.fps if info.fps else 0.0
                if timestamp > limits.max_duration_s:
                    raise RequestError("video_too_long", f"frame {index} is at {timestamp:.1f} s; the limit is "
                                       f"{limits.max_duration_s:.0f} s")
                if sampling.selects(index, linspace):
                    sampled += 1
                    info.rotation = int(getattr(frame, "rotation", 0) or 0)
                    image = _upright(frame.to_ndarray(format="rgb24"), info.rotation)
                    info.height, info.width = image.shape[:2]
                    yield SampledFrame(index, timestamp, image)
                if index >= last:
                    break
        except av.error.FFmpegError as exc:
            if not sampled:
                raise RequestError("corrupt_video", f"no frame of the video could be decoded: {exc}") from None
            info.notes.append(f"decoding stopped at frame {index + 1} of {info.frame_count}: {exc}")
        if not sampled:
            raise RequestError("empty_video", "no frame of the video could be decoded")
        if index < last and not info.notes:
            info.notes.append(f"the stream ended after {index + 1} of {info.frame_count} announced frames")
        announced = round(info.duration_s * info.fps)
        if info.frame_count < announced - 1:
            info.notes.append(f"the stream holds {info.frame_count} frames but its header announces about {announced} "
                              f"({info.duration_s:.2f} s at {info.fps:g} fps): the file looks truncated")

    def close(self) -> None:
        self.container.close()
        self.file.close()

    def __enter__(self) -> "VideoStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_video(data: "bytes | str | Path | VideoSource", sampling: Sampling = Sampling(),
                 limits: VideoLimits = VideoLimits()) -> DecodedVideo:
    """Decode and keep every sampled frame (small clips in tests and tools), or raise RequestError."""
    with VideoStream(data, sampling, limits) as video:
        return DecodedVideo(video.info, list(video.frames()))


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply display-matrix rotation (degrees counter-clockwise, as FFmpeg reports it)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


def iter_frames(data: "bytes | str | Path | VideoSource"):
    """Every frame of a video, upright, in order (for rendering; nothing is kept in memory)."""
    source = VideoSource.of(data)
    with source.open() as file, _open(source, file) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield _upright(frame.to_ndarray(format="rgb24"), int(getattr(frame, "rotation", 0) or 0)), \
                float(stream.average_rate or 25)
