"""The pipelines (image, video) and how one is opened over a bundle."""

from __future__ import annotations

from pathlib import Path

from deepfake_serving.bundle import Bundle
from deepfake_serving.bundle.ensemble import ENSEMBLE_MANIFEST
from deepfake_serving.engines import Device
from deepfake_serving.pipeline.ensemble import EnsemblePipeline, EnsembleVideoPipeline, load_ensemble_pipeline
from deepfake_serving.pipeline.image import ImagePipeline
from deepfake_serving.pipeline.video import VideoPipeline


def load_pipeline(directory: str | Path, media: str = "image", engine: str | None = None, device: Device = Device(),
                  threads: int | None = None, **options
                  ) -> ImagePipeline | VideoPipeline | EnsemblePipeline | EnsembleVideoPipeline:
    """The image (or video) pipeline over a bundle, its classifier on ``engine`` (default: the manifest's);
    over an ensemble bundle, the ensemble's."""
    if (Path(directory) / ENSEMBLE_MANIFEST).is_file():
        return load_ensemble_pipeline(directory, media, engine, device, threads, **options)
    bundle = Bundle.open(directory)
    pipeline = VideoPipeline if media == "video" else ImagePipeline
    return pipeline(bundle.variant, bundle.scorer(engine, device, threads), version=bundle.version,
                    weights_trained=bundle.trained, threads=threads, device=device, **options)


def load_image_pipeline(directory: str | Path, **options) -> ImagePipeline:
    return load_pipeline(directory, "image", **options)  # type: ignore[return-value]


def load_video_pipeline(directory: str | Path, **options) -> VideoPipeline:  # or EnsembleVideoPipeline, a subclass
    return load_pipeline(directory, "video", **options)  # type: ignore[return-value]
