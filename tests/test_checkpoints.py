"""Checkpoint import in the real formats, and refusal of anything else."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from deepfake_serving.core.errors import CheckpointError
from deepfake_serving.variants import create_model, get_variant
from deepfake_serving.variants.checkpoints import load_checkpoint_into
from helpers.checkpoint_formats import save_dfdc_checkpoint


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def mobile():
    torch.manual_seed(1)
    return create_model("b4-mobile")


def test_plain_state_dict(tmp_path, mobile):
    path = tmp_path / "plain.pth"
    torch.save(mobile.state_dict(), path)
    loaded = create_model("b4-mobile", checkpoint=str(path))
    assert same_weights(loaded, mobile)


def test_safetensors(tmp_path, mobile):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in mobile.state_dict().items()}, str(path))
    assert same_weights(create_model("b4-mobile", checkpoint=str(path)), mobile)


def test_dfdc_format_with_module_prefix_timm_head_and_numpy_scalar(tmp_path):
    torch.manual_seed(2)
    source = create_model("b7-dfdc")
    path = tmp_path / "final_111_DeepFakeClassifier_tf_efficientnet_b7_ns_0_36"
    save_dfdc_checkpoint(source, path)
    loaded = create_model("b7-dfdc", checkpoint=str(path))
    assert same_weights(loaded, source)


def test_model_state_dict_format(tmp_path):
    torch.manual_seed(3)
    source = create_model("b4-ff")
    path = tmp_path / "best_deepfake_detector.pth"
    torch.save({"epoch": 4, "model_state_dict": source.state_dict(), "val_acc": 0.9, "timestamp": "2025-01-01"}, path)
    assert same_weights(create_model("b4-ff", checkpoint=str(path)), source)


def test_mismatch_names_missing_and_unexpected_keys(tmp_path, mobile):
    state = dict(mobile.state_dict())
    del state["efficientnet.classifier.7.bias"]
    state["efficientnet.extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        create_model("b4-mobile", checkpoint=str(path))
    assert "missing keys: efficientnet.classifier.7.bias" in str(err.value)
    assert "unexpected keys: efficientnet.extra.weight" in str(err.value)


def test_wrong_variant_reports_shape_mismatch(tmp_path):
    state = create_model("b4-ff").state_dict()
    path = tmp_path / "ff.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing keys: efficientnet"):
        create_model("b4-mobile", checkpoint=str(path))


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": torch.zeros(1)}, "payload": Exploit(marker)}, f)
    # Also in torch's zip format:
    zpath = tmp_path / "evil_zip.pth"
    torch.save({"state_dict": {}, "payload": Exploit(marker)}, zpath)
    for p in (path, zpath):
        with pytest.raises(CheckpointError, match="weights-only") as refused:
            load_checkpoint_into(create_model("b4-ff"), p, get_variant("b4-ff").ignored_checkpoint_prefixes)
        assert "\n" not in str(refused.value)  # one line, for the command line's one-line error
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("b4-ff", checkpoint=str(tmp_path / "nope.pth"))
