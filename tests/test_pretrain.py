"""The pretrain stage's other sources: the authors' published backbones, and none."""

import dataclasses
import hashlib
import json

import pytest
import torch

from birdclef.model import BirdClassifier
from birdclef.pretrain import prepare_backbone
from birdclef.train import TrainError


def published(params, **files):
    pretrain = dataclasses.replace(params.pretrain, source="published", published=files)
    return dataclasses.replace(params, pretrain=pretrain)


def test_published_checkpoint_becomes_the_backbone(params, tmp_path):
    """A Lightning checkpoint of the whole model: the `model.backbone.` weights are kept."""
    backbone = params.family["eca"].backbone
    model = BirdClassifier(backbone, 5)
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    source = tmp_path / "raw/pretrained/models_2025/eca.ckpt"
    source.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 3}, source)

    out, logs = tmp_path / "models/eca.pt", tmp_path / "logs/eca"
    summary = prepare_backbone(published(params, eca="models_2025/eca.ckpt"), "eca", tmp_path / "raw",
                               tmp_path / "store", out, logs)
    loaded = torch.load(out, weights_only=True)
    assert loaded.keys() == model.backbone.state_dict().keys()
    assert all(torch.equal(loaded[key], value) for key, value in model.backbone.state_dict().items())
    fresh = BirdClassifier(backbone, 7)
    fresh.load_backbone(out)  # strict
    assert summary["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert json.loads((logs / "source.json").read_text()) == summary


def test_published_backbone_of_another_architecture_is_refused(params, tmp_path):
    source = tmp_path / "raw/pretrained/other.pth"
    source.parent.mkdir(parents=True)
    torch.save(BirdClassifier("lcnet_050", 1).backbone_state_dict(), source)
    out = tmp_path / "models/eca.pt"
    with pytest.raises(TrainError, match=r"does not fit this backbone.*of another shape.*backbone .mobilenetv3_small_050.: check"):
        prepare_backbone(published(params, eca="other.pth"), "eca", tmp_path / "raw", tmp_path / "store",
                         out, tmp_path / "logs")
    assert not out.exists() and not out.with_name("eca.pt.tmp").exists()


def test_missing_published_file_names_what_is_there(params, tmp_path):
    (tmp_path / "raw/pretrained/models_2024").mkdir(parents=True)
    (tmp_path / "raw/pretrained/models_2024/a.pth").write_bytes(b"")
    with pytest.raises(TrainError, match=r"eca\.ckpt not found.*models_2024/a\.pth"):
        prepare_backbone(published(params, eca="eca.ckpt"), "eca", tmp_path / "raw", tmp_path / "store",
                         tmp_path / "eca.pt", tmp_path / "logs")


def test_source_none_is_the_seeded_random_initialisation(params, tmp_path):
    none = dataclasses.replace(params, pretrain=dataclasses.replace(params.pretrain, source="none"))
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    prepare_backbone(none, "ebs", tmp_path, tmp_path, first, tmp_path / "logs")
    prepare_backbone(none, "ebs", tmp_path, tmp_path, second, tmp_path / "logs")
    one, two = torch.load(first, weights_only=True), torch.load(second, weights_only=True)
    assert all(torch.equal(one[key], two[key]) for key in one)
    BirdClassifier(params.family["ebs"].backbone, 3).load_backbone(first)
