"""What an upload is, from its first bytes: the one allowlist of image formats and video containers.

Decoders only ever see bytes whose signature names an accepted format, and are
told that format: Pillow opens only that plugin, FFmpeg runs only that demuxer
(no EPS/Ghostscript, no HLS playlist that would open other files).
"""

from __future__ import annotations

# (signature, offset, Pillow format)
IMAGE_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WEBP"),  # after RIFF....
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)
ACCEPTED_IMAGES = "JPEG, PNG, WebP, GIF (first frame), BMP, TIFF (first page)"
ACCEPTED_VIDEOS = "MP4, MOV, AVI, WebM, MKV, MPEG-TS"
# ISO BMFF / QuickTime files start with one of these boxes after a 4-byte size.
_QUICKTIME_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")


def image_format(data: bytes) -> str | None:
    """The accepted image format the bytes announce, else None."""
    for magic, offset, name in IMAGE_SIGNATURES:
        if data[offset:offset + len(magic)] == magic and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    return None


def video_container(data: bytes) -> str | None:
    """The FFmpeg demuxer of the accepted container the bytes announce, else None."""
    if data[4:8] in _QUICKTIME_BOXES:
        return "mov"
    if data[:4] == b"RIFF" and data[8:11] == b"AVI":
        return "avi"
    if data[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska and WebM
        return "matroska"
    if len(data) >= 376 and data[0] == data[188] == 0x47:  # MPEG-TS sync bytes every 188
        return "mpegts"
    return None
