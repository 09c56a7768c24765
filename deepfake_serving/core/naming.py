"""Model names, in one place. TorchServe serves a variant's images as ``b4-mobile`` and its videos
as ``b4-mobile-video`` (archives ``b4-mobile-v2.0.mar``); Triton's repository spells them
``b4_mobile`` (the image ensemble), ``b4_mobile_video`` and ``b4_mobile_explain``, with one model per step
(``b4_mobile_preprocess``, ``_classifier``, ``_postprocess``) and, during a rollout, the ensemble
pinned to classifier version N, ``b4_mobile_vN``."""

from __future__ import annotations

import re

VIDEO_SUFFIX = "-video"
# Model names and versions become file names (archives, Triton directories) and URL path segments:
# letters, digits, ".", "_" and "-", starting with a letter or digit; never "..".
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(value: str, what: str = "name") -> str:
    """``value`` when it is safe as a file name and a URL segment; ValueError (before any build) otherwise."""
    if not NAME_PATTERN.fullmatch(str(value)) or ".." in str(value):
        raise ValueError(f"{what} {value!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting "
                         "with a letter or digit (no path separators, no '..')")
    return str(value)
# Where built archives and the Triton repository live, relative to where a command runs.
MODEL_STORE = "model_store"
TRITON_REPOSITORY = "model_repository"
TRITON_ROLES = ("preprocess", "classifier", "postprocess", "video", "explain")
# The classifier's second output: which version answered, whether it was trained, the batch size and this
# request's share of the call's time (JSON), read by postprocess and the video model.
ANSWERED_BY = "ANSWERED_BY"


def default_model_name(variant: str, media: str = "image") -> str:
    """Images are served as ``{variant}``, videos as ``{variant}-video``."""
    return variant if media == "image" else f"{variant}-{media}"


def video_model(model: str) -> str:
    """The video model beside an image model (``b4-mobile`` → ``b4-mobile-video``)."""
    return model if model.endswith(VIDEO_SUFFIX) else f"{model}{VIDEO_SUFFIX}"


def archive_file_name(model_name: str, version: str) -> str:
    return f"{model_name}-v{version}.mar"


def triton_model_name(model: str) -> str:
    """TorchServe's names map onto the repository's: b4-mobile → b4_mobile, b4-mobile-video → b4_mobile_video."""
    return model.replace("-", "_")


def model_names(variant) -> dict[str, str]:
    """Triton model names for one variant (a name or a Variant), by role (``ensemble`` is the image entry)."""
    base = triton_model_name(variant if isinstance(variant, str) else variant.name)
    return {"ensemble": base, **{role: f"{base}_{role}" for role in TRITON_ROLES}}


def explain_model(model: str) -> str:
    """The Triton explain model that explains an image or video model's media (b4_mobile, b4-mobile-video →
    b4_mobile_explain)."""
    return f"{triton_model_name(model).removesuffix('_video')}_explain"


def pinned_ensemble(model: str, version: str | int) -> str:
    """During a rollout, the image ensemble pinned to classifier version N (b4_mobile_v2)."""
    return f"{triton_model_name(model)}_v{version}"
