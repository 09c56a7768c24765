"""Bad and awkward inputs, built from real images."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageEnhance

from deepfake_serving.media import samples


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
    """An AVI with a video stream declared but no frame written (an MP4 without frames holds no
    track at all, which reads as a corrupt index)."""
    import av

    buf = io.BytesIO()
    container = av.open(buf, mode="w", format="avi")
    stream = container.add_stream("mpeg4", rate=25)
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


# -- hostile media: what the file claims differs from what it holds --------------------------
def png_with_bad_crc() -> bytes:
    data = bytearray(samples.encode(samples.astronaut(), "PNG"))
    data[29] ^= 0xFF  # the IHDR chunk's CRC
    return bytes(data)


def tiny_png(side: int = 16) -> bytes:
    return samples.encode(samples.astronaut()[::512 // side, ::512 // side][:side, :side], "PNG")


def sliver_jpeg() -> bytes:
    """4000 x 30: decodable, but the copy faces are detected on (longest side 1024) is 7 px high."""
    return samples.encode(np.full((30, 4000, 3), 128, np.uint8))


def eps() -> bytes:
    """Encapsulated PostScript: Pillow would hand it to Ghostscript."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n"


def ico() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(samples.astronaut()).resize((64, 64)).save(buf, "ICO")
    return buf.getvalue()


def tga() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(samples.astronaut()).save(buf, "TGA")
    return buf.getvalue()


def animated_gif() -> bytes:
    frames = [Image.fromarray(samples.astronaut()), Image.fromarray(samples.no_face())]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def encoded(fmt: str, **options) -> bytes:
    return samples.encode(samples.astronaut(), fmt, **options)


def hls_playlist() -> bytes:
    """A playlist that would make FFmpeg's HLS demuxer open other files."""
    return b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"


def resolution_switch_ts(small: int = 150, big_size: tuple[int, int] = (7680, 4320), big: int = 3) -> bytes:
    """MPEG-TS that declares 320x240 and switches to ``big_size`` after ``small`` frames (a new SPS)."""
    first = samples.encode_video(samples.moving_face_frames(small, size=(320, 240)), "ts")
    second = samples.encode_video([np.full((big_size[1], big_size[0], 3), 90, np.uint8)] * big, "ts")
    return first + second


def claims_frames(count: int = 2**32 - 1) -> bytes:
    """A real 20-frame MP4 whose sample table (stts) claims ``count`` frames."""
    clip = bytearray(samples.encode_video(samples.moving_face_frames(20, size=(320, 240)), "mp4"))
    at = clip.index(b"stts") + 4 + 4 + 4  # box type, version/flags, entry count: the first entry's sample count
    clip[at:at + 4] = struct.pack(">I", count)
    return bytes(clip)


def tiny_frames_video() -> bytes:
    """32x32 frames: their half-size detection copies are 16 px, under MTCNN's smallest face."""
    return samples.encode_video([np.full((32, 32, 3), 100, np.uint8)] * 10, "mp4")


def timestamps_past_the_limit() -> bytes:
    """A header of a few seconds, and a frame stamped at 700 s."""
    stamps = [i * 0.04 for i in range(9)] + [700.0]
    return samples.encode_video(samples.moving_face_frames(10, size=(320, 240)), "mkv", timestamps=stamps)


def corrupt_moov(clip: bytes) -> bytes:
    at = clip.index(b"moov")
    return clip[:at + 4] + b"\0" * 64 + clip[at + 68:]


# Bad requests every backend must answer with a JSON error: payload, HTTP status, error code.
BAD_IMAGES = {
    "empty body": (b"", 400, "empty_body"),
    "not an image": (b"%PDF-1.4 definitely not a picture", 415, "unsupported_media"),
    "truncated jpeg": (truncated_jpeg(), 400, "corrupt_image"),
    "decompression bomb": (decompression_bomb_png(), 413, "image_too_large"),
    "16 px png": (tiny_png(16), 422, "image_too_small"),
    "19 px png": (tiny_png(19), 422, "image_too_small"),
    "4000x30 sliver": (sliver_jpeg(), 422, "image_too_small"),
    "png with a bad crc": (png_with_bad_crc(), 400, "corrupt_image"),
    "eps": (eps(), 415, "unsupported_media"),
    "ico": (ico(), 415, "unsupported_media"),
    "tga": (tga(), 415, "unsupported_media"),
    "json": (b'{"image": "aGVsbG8="}', 415, "unsupported_media"),
    "a video": (samples.encode_video(samples.moving_face_frames(4, size=(320, 240)), "mp4"), 415,
                "video_sent_to_image_endpoint"),
}

# Accepted formats a backend must answer with a face.
GOOD_IMAGES = {
    "webp": lambda: encoded("WEBP", quality=90),
    "bmp": lambda: encoded("BMP"),
    "tiff": lambda: encoded("TIFF"),
    "animated gif (first frame)": animated_gif,
}

BAD_VIDEOS = {
    "truncated": (lambda clip: clip[: len(clip) // 3], 400, "corrupt_video"),
    "corrupt moov": (corrupt_moov, 400, "corrupt_video"),
    "not a video": (lambda clip: b"plain text " * 50, 415, "unsupported_media"),
    "hls playlist": (lambda clip: hls_playlist(), 415, "unsupported_media"),
    "audio only": (lambda clip: audio_only(), 422, "no_video_stream"),
    "zero frames": (lambda clip: zero_frame_video(), 422, "empty_video"),
    "an image": (lambda clip: samples.astronaut_jpeg(), 415, "image_sent_to_video_endpoint"),
    "empty": (lambda clip: b"", 400, "empty_body"),
    "32 px frames": (lambda clip: tiny_frames_video(), 422, "frame_too_small"),
    "claims 2**32-1 frames": (lambda clip: claims_frames(), 413, "too_many_frames"),
    "a frame at 700 s": (lambda clip: timestamps_past_the_limit(), 413, "video_too_long"),
    "320x240, then 7680x4320": (lambda clip: resolution_switch_ts(small=20), 413, "frame_too_large"),
}


def tiled_faces(side: int = 1024, tile: int = 40) -> np.ndarray:
    """The astronaut's face tiled at ``tile`` px over a ``side``×``side`` canvas (625 faces at the
    defaults): a 100 KB PNG that asks MTCNN for thousands of candidate boxes."""
    x1, y1, x2, y2 = samples.ASTRONAUT_FACE_REGION
    face = np.asarray(Image.fromarray(samples.astronaut()[y1:y2, x1:x2]).resize((tile, tile), Image.BICUBIC))
    canvas = np.zeros((side, side, 3), np.uint8)
    count = side // tile
    canvas[:count * tile, :count * tile] = np.tile(face, (count, count, 1))
    return canvas


def tiled_faces_png() -> bytes:
    return samples.encode(tiled_faces(), "PNG", optimize=True)


def tiled_faces_clip(frames: int = 8, size: tuple[int, int] = (1920, 1080), tile: int = 40) -> bytes:
    """An honest clip whose every frame is faces tiled at ``tile`` px."""
    width, height = size
    frame = tiled_faces(max(width, height), tile)[:height, :width]
    return samples.encode_video([frame] * frames, "mp4")


def degraded(data: bytes) -> bytes:
    """The same photograph greyed, darker and low-quality: a shifted input stream for the drift alert."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = ImageEnhance.Color(ImageEnhance.Brightness(image).enhance(0.7)).enhance(0.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=30)
    return out.getvalue()
