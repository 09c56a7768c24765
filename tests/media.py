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
