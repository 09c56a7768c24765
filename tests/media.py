"""Bad and awkward inputs, built from real images."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from deepfake_serving import samples


def truncated_jpeg() -> bytes:
    data = samples.astronaut_jpeg()
    return data[: len(data) // 2]


def grayscale_png() -> bytes:
    return samples.encode(np.asarray(Image.fromarray(samples.astronaut()).convert("L")), "PNG")


def rgba_png() -> bytes:
    rgb = samples.astronaut()
    alpha = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
    return samples.encode(np.concatenate([rgb, alpha], axis=2), "PNG")


def gray16_png() -> bytes:
    gray = np.asarray(Image.fromarray(samples.astronaut()).convert("L"), dtype=np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")  # mode I;16
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """The astronaut stored lying on her side, with EXIF orientation 6 (rotate 90° clockwise to view)."""
    stored = np.ascontiguousarray(np.rot90(samples.astronaut(), k=1))  # counter-clockwise
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def decompression_bomb_png(side: int = 100_000) -> bytes:
    """A tiny PNG whose header declares side × side pixels of zeros (10 gigapixels)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    row = b"\x00" * (side + 1)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(64)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def audio_only(fmt: str = "mp4") -> bytes:
    """One second of a 440 Hz tone, AAC in MP4: a container with no video stream."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream("aac", rate=16000)
        t = np.arange(16000) / 16000
        samples_ = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples_, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def zero_frame_video() -> bytes:
    """An MP4 with a video stream declared but no frame written."""
    import av

    buf = io.BytesIO()
    container = av.open(buf, mode="w", format="mp4")
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
    container.start_encoding()  # write the header although no frame follows
    container.close()
    return buf.getvalue()


def rotated_video() -> tuple[bytes, list[np.ndarray]]:
    """Portrait frames stored turned 90 degrees counter-clockwise (landscape), with an MP4 display
    matrix that says "turn 90 degrees clockwise to show" (what phones write). Returns the clip and
    the upright frames a viewer sees."""
    upright = samples.moving_face_frames(8, size=(240, 320))
    stored = [np.ascontiguousarray(np.rot90(f, k=1)) for f in upright]
    clip = samples.encode_video(stored, "mp4")
    matrix_at = clip.index(b"tkhd") + 4 + 40  # version/flags, times, track id, duration, layer... then matrix
    rotate_cw = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 0x40000000)
    return clip[:matrix_at] + rotate_cw + clip[matrix_at + 36:], upright


# Bad requests every backend must answer with a JSON error: payload, HTTP status, error code.
BAD_IMAGES = {
    "empty body": (b"", 400, "empty_body"),
    "not an image": (b"%PDF-1.4 definitely not a picture", 415, "unsupported_media"),
    "truncated jpeg": (truncated_jpeg(), 400, "corrupt_image"),
    "decompression bomb": (decompression_bomb_png(), 413, "image_too_large"),
}

BAD_VIDEOS = {
    "truncated": (lambda clip: clip[: len(clip) // 3], 400, "corrupt_video"),
    "not a video": (lambda clip: b"plain text " * 50, 415, "unsupported_media"),
    "audio only": (lambda clip: audio_only(), 422, "no_video_stream"),
    "zero frames": (lambda clip: zero_frame_video(), 422, None),
    "an image": (lambda clip: samples.astronaut_jpeg(), 415, "image_sent_to_video_endpoint"),
    "empty": (lambda clip: b"", 400, "empty_body"),
}
