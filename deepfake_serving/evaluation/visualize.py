"""Seed 001's visualisation, rendered from a saved video response and the clip (no model is run):
an overlay video with the per-frame suspicion graph (top right) and a suspicion bar (bottom),
and a PNG plot of the per-frame scores; and an explained image's heatmaps blended on the photograph."""

from __future__ import annotations

import base64
import fractions
from pathlib import Path
from typing import Callable

import av
import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deepfake_serving.media.video import iter_frames  # noqa: E402

NO_FACE_COLOR = (128, 128, 128)


def face_heatmap(explanation: dict) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """(region, heatmap in [0, 1] at the region's size): a face's explanation placed on the original image."""
    png = np.frombuffer(base64.b64decode(explanation["heatmap_png"]), dtype=np.uint8)
    heatmap = cv2.imdecode(png, cv2.IMREAD_GRAYSCALE)
    if heatmap is None:
        raise ValueError("the explanation's heatmap is not a PNG")
    x, y, w, h = explanation["window"]
    x1, y1, x2, y2 = explanation["region"]
    shown = heatmap[y:y + h, x:x + w].astype(np.float32) / 255.0
    return (x1, y1, x2, y2), cv2.resize(shown, (max(x2 - x1, 1), max(y2 - y1, 1)), interpolation=cv2.INTER_LINEAR)


def render_explanation(image: np.ndarray, response: dict, alpha: float = 0.5) -> np.ndarray:
    """The RGB photograph with each explained face's heatmap blended in its crop's region (JET colours),
    its box drawn and its P(fake) written above it."""
    out = image.copy()
    for face in response["faces"]:
        if face.get("explanation"):
            (x1, y1, x2, y2), heat = face_heatmap(face["explanation"])
            colours = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]  # BGR → RGB
            weight = (alpha * heat)[..., None]
            out[y1:y2, x1:x2] = (out[y1:y2, x1:x2] * (1 - weight) + colours * weight).astype(np.uint8)
        bx1, by1, bx2, by2 = face["box"]
        cv2.rectangle(out, (bx1, by1), (bx2, by2), (255, 255, 255), 2)
        cv2.putText(out, f"P(fake) {face['fake_probability']:.3f}", (bx1, max(by1 - 8, 16)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
    return out


def frame_scores(response: dict, frame_count: int) -> list[float | None]:
    """A score for every frame of the clip: the latest analysed frame's at or before it."""
    analysed = {f["index"]: f["score"] for f in response["frames"]}
    scores, current = [], None
    for i in range(frame_count):
        if i in analysed:
            current = analysed[i]
        scores.append(current)
    return scores


def plot_scores(response: dict, out_png: str | Path) -> Path:
    xs = [f["timestamp"] for f in response["frames"]]
    ys = [np.nan if f["score"] is None else f["score"] for f in response["frames"]]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(xs, ys, "o-", color="#FF851B")
    ax.axhline(response.get("threshold", 0.5), color="grey", linestyle="--")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("P(fake), most suspicious face")
    verdict = response["label"] if response["fake_probability"] is None else \
        f"{response['label']} ({response['fake_probability']:.3f})"
    ax.set_title(f"{response['model']} v{response['version']}: {verdict}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def _graph(fig, ax, scores: list[float | None], upto: int) -> np.ndarray:
    ax.clear()
    ys = np.array([np.nan if s is None else s for s in scores[: upto + 1]])
    xs = np.arange(len(ys))
    ax.fill_between(xs, np.nan_to_num(ys), where=~np.isnan(ys), color="#FF4136", alpha=0.4)
    ax.plot(xs, ys, color="#FF851B", linewidth=2)
    ax.axhline(y=0.5, color="white", linestyle="--", alpha=0.7)
    ax.set_xlim(0, max(1, len(scores) - 1))
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Frame Suspicion Analysis")
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3]


def render_overlay(response: dict, clip: bytes, out_video: str | Path,
                   progress: Callable[[int], None] | None = None) -> Path:
    """The clip with the suspicion graph and bar; where the answer explains a frame's faces (an
    ``/explanations`` answer), their heatmaps are blended on that frame and held until the next analysed one."""
    frame_count = response["frame_count"]
    scores = frame_scores(response, frame_count)
    analysed = {f["index"]: f for f in response["frames"]}
    explained = None
    plt.style.use("dark_background")
    fig, ax = plt.subplots(figsize=(6, 2.5))
    out_video = Path(out_video)
    with av.open(str(out_video), mode="w") as container:
        stream = None
        for i, (frame, fps) in enumerate(iter_frames(clip)):
            h, w = frame.shape[:2]
            if stream is None:
                stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1000))
                stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
            score = scores[min(i, len(scores) - 1)]
            graph = _graph(fig, ax, scores, min(i, len(scores) - 1))
            gh = int(h * 0.3)
            gw = min(w - 20, int(gh * graph.shape[1] / graph.shape[0]))
            if i in analysed:
                explained = analysed[i] if any(face.get("explanation") for face in analysed[i]["faces"]) else None
            frame = render_explanation(frame, explained) if explained else frame.copy()
            frame[10:10 + gh, w - gw - 10:w - 10] = cv2.resize(graph, (gw, gh), interpolation=cv2.INTER_AREA)
            color = NO_FACE_COLOR if score is None else (int(255 * score), int(255 * (1 - score)), 0)  # RGB
            cv2.rectangle(frame, (0, h - 40), (w, h), color, -1)
            text = "Frame Suspicion: no face" if score is None else f"Frame Suspicion: {score:.2f}"
            cv2.putText(frame, text, (15, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2)
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[: stream.height, : stream.width]),
                                                     format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
            if progress:
                progress(1)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    plt.close(fig)
    plt.style.use("default")
    return out_video
