"""``--init-weights``: a checkpoint of the variant (any accepted layout), or ImageNet weights of its backbone
(timm's or torchvision's state dict, classifier included or not). Read without unpickling objects."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from deepfake_serving.core.errors import CheckpointError
from deepfake_serving.variants import Variant
from deepfake_serving.variants.checkpoints import load_state_dict_strict, normalise_keys, read_checkpoint


def load_init_weights(model: nn.Module, variant: Variant, path: str | Path) -> str:
    """Load ``path`` into ``model``; what it was ("the whole model" or "the backbone"). Raises CheckpointError
    naming the keys that did not match."""
    state = normalise_keys(read_checkpoint(path), variant.ignored_checkpoint_prefixes)
    whole = model.state_dict()
    if set(state) == set(whole):
        load_state_dict_strict(model, state, f"{Path(path).name}")
        return "the whole model"
    backbone = model.get_submodule(variant.backbone)
    wanted = backbone.state_dict()
    for prefix in ("", f"{variant.backbone.split('.')[-1]}.", f"{variant.backbone}."):
        mapped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if set(wanted) <= set(mapped):
            load_state_dict_strict(backbone, {k: mapped[k] for k in wanted}, f"{Path(path).name} (backbone)")
            return "the backbone"
    try:
        load_state_dict_strict(model, state, f"{Path(path).name}")
    except CheckpointError as err:
        raise CheckpointError(f"{err} (nor are they the weights of its backbone, {variant.backbone})") from None
    return "the whole model"  # not reached: the key sets differ
