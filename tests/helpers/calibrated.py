"""Random networks made well-conditioned on faces (the reduced-precision and explanation tests need a
network whose scores spread over real faces, as a trained one's do), and the photographs they use."""

import numpy as np
import torch

from deepfake_serving.media import samples
from deepfake_serving.variants import create_model, get_variant


def write_face_folders(root):
    """Calibration and held-out photographs: frames of two different clips, brightness-jittered."""
    rng = np.random.default_rng(0)
    for name, frames in (("calibration", samples.moving_face_frames(16, (640, 480))),
                         ("holdout", samples.moving_face_frames(7, (800, 600), faces=2)[1:])):
        (root / name).mkdir()
        for i, frame in enumerate(frames):
            jittered = np.clip(frame * rng.uniform(0.7, 1.2) + rng.uniform(-20, 20), 0, 255).astype(np.uint8)
            (root / name / f"{i}.jpg").write_bytes(samples.encode(jittered))
    (root / "no_faces").mkdir()
    (root / "no_faces" / "cup.jpg").write_bytes(samples.encode(samples.no_face()))
    (root / "no_faces" / "notes.txt").write_text("not an image")
    return root


def calibrated_b4_mobile(folder, seed: int = 0):
    """A random b4-mobile made well-conditioned on faces: BatchNorm statistics measured on the folder's
    crops (as training leaves them) and a last layer that spreads their scores (logit std 1)."""
    from torch import nn

    from deepfake_serving.builder.quantize import folder_faces
    from deepfake_serving.variants import to_array

    variant = get_variant("b4-mobile")
    crops = folder_faces(folder, variant, "calibration")
    x = torch.from_numpy(to_array(crops, variant.preprocessing.mean, variant.preprocessing.std))
    torch.manual_seed(seed)
    model = create_model("b4-mobile")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the batch
    model.train()
    net = model.efficientnet
    with torch.no_grad():
        model(x)
        model.eval()
        features = net.classifier[:7](torch.flatten(net.avgpool(net.features(x)), 1))
        centred = features - features.mean(0)
        direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        weight = direction / (centred @ direction).std()
        net.classifier[7].weight.copy_(weight[None])
        net.classifier[7].bias.copy_(-(features.mean(0) @ weight)[None])
    return model


ARTIFACT_SIDE = 56  # a quarter of b4-mobile's input side


def content_box(crop: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, w, h) of a model-ready crop's non-black part."""
    ys, xs = np.nonzero(crop.max(axis=2))
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def with_artifact(crop: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """The face with a 2-pixel checkerboard (an upsampling artefact) stamped at a random place on it."""
    x, y, w, h = content_box(crop)
    px, py = int(rng.integers(x, x + w - ARTIFACT_SIDE)), int(rng.integers(y, y + h - ARTIFACT_SIDE))
    yy, xx = np.mgrid[0:ARTIFACT_SIDE, 0:ARTIFACT_SIDE]
    out = crop.astype(np.int16)
    out[py:py + ARTIFACT_SIDE, px:px + ARTIFACT_SIDE] += np.where((yy // 2 + xx // 2) % 2 == 0, 40, -40)[..., None]
    return np.clip(out, 0, 255).astype(np.uint8), (px, py)


def artifact_detector(folder, steps: int = 60):
    """A test-trained b4-mobile that calls a face fake where it carries ``with_artifact``'s checkerboard:
    the calibrated network's last stage and head trained on the folder's faces, with and without it.
    What it looks at is known, so an explanation of it can be checked."""
    from deepfake_serving.builder.quantize import folder_faces

    variant = get_variant("b4-mobile")
    rng = np.random.default_rng(0)
    faces = folder_faces(folder, variant, "training")
    crops = [with_artifact(c, rng)[0] for c in faces for _ in range(2)] + faces + [c[:, ::-1].copy() for c in faces]
    labels = torch.tensor([1.0] * (2 * len(faces)) + [0.0] * (2 * len(faces)))
    model = calibrated_b4_mobile(folder)
    net = model.efficientnet
    with torch.no_grad():
        features = net.features[:8](torch.from_numpy(variant.preprocessing.tensor(crops)))
    trained = [*net.features[8].parameters(), *net.classifier.parameters()]
    optimizer = torch.optim.Adam(trained, 1e-3)
    for _ in range(steps):
        logits = net.classifier[:-1](torch.flatten(net.avgpool(net.features[8](features)), 1)).reshape(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
