"""Every name in the model tables builds and trains one step; pretrained weights stay offline."""

from __future__ import annotations

import pickle

import pytest
import torch

from melanoma.models import (
    CLASSIFIERS,
    SEGMENTER_ARCHS,
    WeightsNotFoundError,
    create_classifier,
    create_segmenter,
)


@pytest.mark.parametrize("arch", list(SEGMENTER_ARCHS))
def test_every_segmenter_runs_forward_and_backward(arch):
    spec = SEGMENTER_ARCHS[arch]
    model = create_segmenter(arch, spec.example_encoder)
    x = torch.randint(0, 256, (2, 3, spec.min_size, spec.min_size), dtype=torch.uint8)
    out = model(x)
    assert out.shape == (2, 1, spec.min_size, spec.min_size)
    out.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_every_classifier_runs_forward_and_backward(name):
    spec = CLASSIFIERS[name]
    size = spec.min_size_aux if spec.has_aux else spec.min_size
    model = create_classifier(name)
    model.train()
    out = model(torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8))
    if spec.has_aux:
        logits, aux = out
        assert len(aux) >= 1 and all(a.shape == (2, 2) for a in aux)
        (logits.sum() + sum(a.sum() for a in aux)).backward()
    else:
        logits = out
        logits.sum().backward()
    assert logits.shape == (2, 2)
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, size, size, dtype=torch.uint8)).shape == (1, 2)


def test_inception_without_aux_is_built_without_it():
    model = create_classifier("inception_v3", aux=False)
    assert model.net.AuxLogits is None and not model.has_aux
    model.train()
    out = model(torch.zeros(2, 3, 80, 80, dtype=torch.uint8))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid classifiers: resnet18, resnet34"):
        create_classifier("resnet19")
    with pytest.raises(ValueError, match="valid: unet, unetplusplus, fpn"):
        create_segmenter("segnet", "resnet18")
    with pytest.raises(ValueError, match="valid encoders are SMP's: .*resnet18.*tu-<name>"):
        create_segmenter("fpn", "resnet19")
    with pytest.raises(ValueError, match="not in timm.list_models"):
        create_segmenter("fpn", "tu-not_a_model")


def test_plain_name_tables_agree_with_the_model_factories():
    """Config validation reads melanoma.names; the factories key their tables by the same
    names, and the encoder list is the installed segmentation-models-pytorch's."""
    import segmentation_models_pytorch as smp

    from melanoma import names
    from melanoma.engine.losses import CLS_LOSSES, SEG_LOSSES
    from melanoma.models.classifier import CLASSIFIERS
    from melanoma.models.segmenter import SEGMENTER_ARCHS

    assert tuple(sorted(smp.encoders.get_encoder_names())) == names.SMP_ENCODERS
    assert set(names.SEGMENTER_MIN_SIZE) == set(SEGMENTER_ARCHS)
    assert set(names.CLASSIFIER_SIZES) == set(CLASSIFIERS)
    assert {"seg": tuple(SEG_LOSSES), "cls": tuple(CLS_LOSSES)} == names.LOSSES
    for name, spec in CLASSIFIERS.items():
        assert spec.input_size == names.CLASSIFIER_SIZES[name].input_size


def test_old_architecture_spellings_work():
    assert isinstance(create_segmenter("FPN", "resnet18"), torch.nn.Module)
    assert isinstance(create_segmenter("DeepLabV3Plus", "resnet18"), torch.nn.Module)


def test_missing_pretrained_weights_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError) as err:
        create_classifier("resnet18", pretrained=True)
    assert "resnet18" in str(err.value) and "weights_path" in str(err.value)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(
        WeightsNotFoundError, match="huggingface-cli download smp-hub/resnet18.imagenet"
    ):
        create_segmenter("fpn", "resnet18", pretrained=True)


def test_explicit_weights_file(tmp_path):
    source = create_classifier("resnet18", num_classes=1000)
    torch.save(source.net.state_dict(), tmp_path / "r18.pth")
    loaded = create_classifier("resnet18", weights_path=tmp_path / "r18.pth")
    assert torch.equal(loaded.net.conv1.weight, source.net.conv1.weight)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(pickle.UnpicklingError, match="bad.pth|pickle|load"):
        create_classifier("resnet18", weights_path=tmp_path / "bad.pth")


def test_offline_lite0_weights_recognise_a_cat_and_an_espresso():
    skimage_data = pytest.importorskip("skimage.data")
    import timm
    import torch.nn.functional as F

    from melanoma.models.weights import lite_imagenet_state_dict

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    net.load_state_dict(lite_imagenet_state_dict(0, net.state_dict()), strict=True)
    net.eval()
    for picture, classes in (
        (skimage_data.chelsea(), range(281, 286)),
        (skimage_data.coffee(), [967]),
    ):
        x = torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        with torch.no_grad():
            top = net((x - 0.5) / 0.5).argmax().item()
        assert top in classes


def test_lite0_pretrained_through_the_factories():
    random_init = create_classifier("efficientnet_lite0")
    pretrained = create_classifier("efficientnet_lite0", pretrained=True)
    assert not torch.equal(random_init.net.conv_stem.weight, pretrained.net.conv_stem.weight)
    assert pretrained.preprocess.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    seg = create_segmenter("fpn", "tu-tf_efficientnet_lite0", pretrained=True)
    assert torch.equal(seg.net.encoder.model.conv_stem.weight, pretrained.net.conv_stem.weight)


def test_lite_key_mapping_rejects_incomplete_sources():
    import timm

    from melanoma.models.weights import convert_lite_state_dict

    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    with pytest.raises(ValueError, match="unexpected source key"):
        convert_lite_state_dict({"something.weight": torch.zeros(1)}, target)
    with pytest.raises(ValueError, match="incomplete"):
        convert_lite_state_dict({"_conv_stem.weight": target["conv_stem.weight"]}, target)
