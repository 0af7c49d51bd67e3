"""DINOv2ObjectDetector: shapes, padding invariance, offline builds, backbone modes, predict(), persistence."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import build_small_detector, perturb_head_
from dino_detector import DINOv2ObjectDetector
from dino_detector.config import DataConfig


@pytest.fixture(scope="module")
def detector():
    """A small 3-class detector in eval mode with non-trivial (perturbed) heads."""
    model = build_small_detector(num_classes=3)
    perturb_head_(model)
    return model.eval()


def outputs_close(a: dict, b: dict, index_a: int = 0, index_b: int = 0, atol: float = 1e-4) -> None:
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(a[key][index_a], b[key][index_b], atol=atol, rtol=0)
    assert len(a["aux_outputs"]) == len(b["aux_outputs"])
    for aux_a, aux_b in zip(a["aux_outputs"], b["aux_outputs"]):
        for key in ("pred_logits", "pred_boxes"):
            torch.testing.assert_close(aux_a[key][index_a], aux_b[key][index_b], atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------- forward
def test_output_shapes_and_box_range(detector):
    images = torch.rand(2, 3, 56, 84)
    with torch.no_grad():
        out = detector(images)
    assert out["pred_logits"].shape == (2, 10, 3)
    assert out["pred_boxes"].shape == (2, 10, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert len(out["aux_outputs"]) == 2 - 1
    assert out["aux_outputs"][0]["pred_logits"].shape == (2, 10, 3)
    assert out["aux_outputs"][0]["pred_boxes"].shape == (2, 10, 4)
    # the two images differ, so must their predictions
    assert (out["pred_logits"][0] - out["pred_logits"][1]).abs().max() > 1e-4


def test_non_square_input_not_a_multiple_of_the_patch_size(detector):
    image = torch.rand(3, 61, 97)  # 61 and 97 are not multiples of 14
    with torch.no_grad():
        out_tensor = detector(image)  # a single [3, H, W] tensor is accepted too
        out_list = detector([image])
    assert out_tensor["pred_logits"].shape == (1, 10, 3)
    assert torch.isfinite(out_tensor["pred_logits"]).all()
    assert ((out_tensor["pred_boxes"] > 0) & (out_tensor["pred_boxes"] < 1)).all()
    outputs_close(out_tensor, out_list, atol=1e-6)


def test_forward_rejects_bad_shapes(detector):
    with pytest.raises(ValueError):
        detector(torch.rand(2, 1, 56, 56))
    with pytest.raises(ValueError):
        detector([torch.rand(56, 56)])
    with pytest.raises(ValueError):
        detector([])


PADDING_CASES = {
    "deformable-1": dict(attention="deformable", num_feature_levels=1),
    "deformable-4": dict(attention="deformable", num_feature_levels=4),
    "standard-1": dict(attention="standard", num_feature_levels=1),
    "standard-4": dict(attention="standard", num_feature_levels=4),
    "deformable-4-encode-upsampled": dict(num_feature_levels=4, encode_upsampled_level=True),
    "deformable-4-shared-values-3-layers": dict(num_feature_levels=4, decoder_shared_values=True,
                                                backbone_feature_layers=3),
    "softmax-mlp-heads": dict(classifier="softmax", class_mlp_layers=2, head_dropout=0.1),
}


@pytest.mark.parametrize("case", sorted(PADDING_CASES))
def test_outputs_do_not_depend_on_batch_padding(case):
    model = build_small_detector(num_classes=3, **PADDING_CASES[case])
    perturb_head_(model)
    model.eval()
    small, large = torch.rand(3, 70, 90), torch.rand(3, 120, 150)
    with torch.no_grad():
        alone = model([small])
        batched = model([small, large])
        swapped = model([large, small])
    outputs_close(alone, batched, 0, 0)
    outputs_close(alone, swapped, 0, 1)
    # control: the two images get different predictions
    assert (batched["pred_logits"][0] - batched["pred_logits"][1]).abs().max() > 1e-3


def test_gradients_do_not_depend_on_batch_padding():
    """The loss of one image gives the same gradients alone and beside a larger image (so DDP and gradient
    accumulation, which pad differently, train alike). Fails if the deformable offsets start on integers: every
    initial sample then sits on a cell centre, where bilinear sampling's gradient flips with float rounding."""
    from dino_detector.config import LossConfig
    from dino_detector.losses.criterion import build_criterion

    torch.manual_seed(0)
    model = build_small_detector(num_classes=3)
    criterion = build_criterion(3, LossConfig())
    small, large = torch.rand(3, 70, 90), torch.rand(3, 120, 150)
    target = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]]), "labels": torch.tensor([1])}]

    def gradients(batch):
        model.zero_grad()
        out = model(batch)
        first = {"pred_logits": out["pred_logits"][:1], "pred_boxes": out["pred_boxes"][:1],
                 "aux_outputs": [{k: v[:1] for k, v in aux.items()} for aux in out["aux_outputs"]]}
        losses = criterion(first, target)
        weights = criterion.weight_dict(len(first["aux_outputs"]))
        sum(losses[k] * weights[k] for k in losses).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    alone, batched = gradients([small]), gradients([small, large])
    assert alone.keys() == batched.keys()
    for name in alone:
        scale = alone[name].abs().max().item() + 1e-6
        assert (alone[name] - batched[name]).abs().max().item() <= 1e-4 * scale + 1e-6, name


def test_encoder_reads_but_does_not_update_the_upsampled_level():
    from dino_detector.models.transformer import Encoder, EncoderLayer, FlatLevels

    torch.manual_seed(0)
    shapes = [(4, 6), (2, 3)]  # the x2 level first, as the pyramid orders them
    first, total = 24, 30
    encoder = Encoder(EncoderLayer(dim=16, heads=2, ffn=32, dropout=0.0, attention="deformable", levels=2, points=2), 2)
    src, pos, ref = torch.randn(1, total, 16), torch.randn(1, total, 16), torch.rand(1, total, 2)
    levels = FlatLevels(shapes, torch.ones(1, 2, 2), torch.zeros(1, total, dtype=torch.bool))
    out = encoder(src, pos, ref, levels, first)
    torch.testing.assert_close(out[:, :first], src[:, :first], atol=0, rtol=0)
    assert (out[:, first:] - src[:, first:]).abs().max() > 1e-2
    changed = src.clone()
    changed[:, :first] += 1.0  # the coarse tokens attend to the upsampled level's values
    assert (encoder(changed, pos, ref, levels, first)[:, first:] - out[:, first:]).abs().max() > 1e-4


def test_decoder_shared_values_has_one_value_projection():
    shared = build_small_detector(num_classes=3, decoder_shared_values=True)
    own = build_small_detector(num_classes=3)
    assert shared.decoder.value_proj is not None and own.decoder.value_proj is None
    assert all(layer.cross_attn.value_proj is None for layer in shared.decoder.layers)
    assert all(layer.cross_attn.value_proj is not None for layer in own.decoder.layers)
    n_shared, n_own = (sum(p.numel() for p in m.decoder.parameters()) for m in (shared, own))
    assert n_own - n_shared == (len(own.decoder.layers) - 1) * (64 * 64 + 64)


def test_without_box_refinement_and_aux_loss():
    model = build_small_detector(num_classes=4, box_refine=False, aux_loss=False, decoder_layers=2).eval()
    assert len(model.decoder.bbox_heads) == 1  # one shared box head
    with torch.no_grad():
        out = model(torch.rand(1, 3, 56, 56))
    assert "aux_outputs" not in out
    assert out["pred_logits"].shape == (1, 10, 4)
    # the box head starts at zero: without refinement the boxes are the initial reference boxes
    torch.testing.assert_close(out["pred_boxes"][0], model.query_boxes.weight.sigmoid(), atol=1e-6, rtol=0)


def test_unknown_attention_and_zero_classes_are_rejected():
    with pytest.raises(ValueError, match="attention"):
        build_small_detector(num_classes=3, attention="linear")
    with pytest.raises(ValueError, match="num_classes"):
        DINOv2ObjectDetector(num_classes=0, dino_model="tiny", pretrained=False)


# ---------------------------------------------------------------------------------------------- backbones
def test_dinov2_small_architecture_builds_offline_with_about_22m_backbone_parameters():
    model = DINOv2ObjectDetector(num_classes=80, dino_model="facebook/dinov2-small", pretrained=False)
    n = sum(p.numel() for p in model.backbone.parameters())
    assert 21_000_000 <= n <= 23_000_000
    assert model.backbone.patch_size == 14
    assert model.backbone.num_channels == 384
    assert model.num_classes == 80


def test_dinov3_architecture_builds_offline_with_lora_on_its_last_blocks():
    model = build_small_detector(num_classes=2, dino_model="facebook/dinov3-vits16-pretrain-lvd1689m",
                                 backbone_mode="lora", lora_last_n_blocks=1, decoder_layers=1)
    assert model.backbone.patch_size == 16
    assert model.backbone.num_prefix_tokens == 1 + 4  # CLS + 4 registers
    names = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and ".model.layer.11." in n for n in names)
    perturb_head_(model)
    model.eval()
    small, large = torch.rand(3, 50, 70), torch.rand(3, 80, 96)
    with torch.no_grad():
        alone, batched = model([small]), model([small, large])
    outputs_close(alone, batched)


def test_pretrained_backbone_offline_raises_a_clear_error(monkeypatch, tmp_path):
    from dino_detector.backbones.vit import PretrainedUnavailableError, load_vit

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder named like the model
    with pytest.raises(PretrainedUnavailableError) as info:
        load_vit("facebook/dinov2-small", pretrained=True)
    message = str(info.value)
    assert "facebook/dinov2-small" in message
    assert "--no_pretrained" in message
    assert "tiny" in message


def trainable_backbone_names(model) -> list[str]:
    return [n for n, p in model.backbone.named_parameters() if p.requires_grad]


def test_lora_mode_trains_only_lora_parameters_of_the_backbone():
    model = build_small_detector(num_classes=3, backbone_mode="lora")
    names = trainable_backbone_names(model)
    assert names, "LoRA mode must leave some backbone parameters trainable"
    assert all("lora_" in n for n in names)
    blocks = {int(re.search(r"layer\.(\d+)\.", n).group(1)) for n in names}
    assert blocks == set(range(6))  # tiny has 6 blocks; lora_last_n_blocks=0 -> all of them
    modules = {re.search(r"\.(\w+_proj)\.lora_", n).group(1) for n in names}
    assert modules == {"q_proj", "v_proj"}  # the default target modules
    # the detector head stays fully trainable
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    assert all(p.requires_grad for p in head)


def test_lora_last_n_blocks_limits_adapters_to_the_last_blocks():
    model = build_small_detector(num_classes=3, backbone_mode="lora", lora_last_n_blocks=2,
                                 lora_target_modules=["q_proj", "k_proj"])
    names = trainable_backbone_names(model)
    assert all("lora_" in n for n in names)
    blocks = {int(re.search(r"layer\.(\d+)\.", n).group(1)) for n in names}
    assert blocks == {4, 5}
    modules = {re.search(r"\.(\w+_proj)\.lora_", n).group(1) for n in names}
    assert modules == {"q_proj", "k_proj"}
    lora_modules = [n for n, _ in model.backbone.named_modules() if n.endswith("lora_A")]
    assert len(lora_modules) == 2 * 2  # 2 blocks x 2 projections


def test_frozen_mode_has_no_trainable_backbone_parameters():
    model = build_small_detector(num_classes=3, backbone_mode="frozen")
    assert model.backbone_mode == "frozen"
    assert trainable_backbone_names(model) == []
    assert any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("backbone."))


def test_auto_mode_trains_a_random_backbone_fully():
    model = build_small_detector(num_classes=3, backbone_mode="auto")
    assert model.backbone_mode == "full"
    frozen = [n for n, p in model.backbone.named_parameters() if not p.requires_grad]
    assert frozen == ["vit.embeddings.mask_token"]  # detection never masks patches: it gets no gradient


# ---------------------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def predictor():
    model = build_small_detector(num_classes=3, category_ids=[1, 5, 9], class_names=["a", "b", "c"],
                                 data_config=DataConfig(image_size=84))
    perturb_head_(model)
    return model.eval()


@pytest.fixture
def rgb_image(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    path = tmp_path / "image.png"  # lossless: the file decodes to exactly ``array``
    Image.fromarray(array).save(path)
    return array, path


def test_predict_gives_identical_results_for_path_pil_numpy_and_tensor(predictor, rgb_image):
    array, path = rgb_image
    inputs = {"path": path, "str": str(path), "pil": Image.fromarray(array), "numpy": array,
              "uint8 tensor": torch.from_numpy(array).permute(2, 0, 1),
              "float tensor": torch.from_numpy(array).permute(2, 0, 1).float() / 255}
    results = {name: predictor.predict(x, threshold=0.0, top_k=15) for name, x in inputs.items()}

    ref = results["path"]
    assert ref["boxes"].shape == (15, 4)
    assert set(ref["labels"].tolist()) <= {1, 5, 9}
    assert ref["label_names"] == [{1: "a", 5: "b", 9: "c"}[c] for c in ref["labels"].tolist()]
    # boxes are xyxy pixels of the original 80 x 60 image
    assert (ref["boxes"][:, 0] <= ref["boxes"][:, 2]).all() and (ref["boxes"][:, 1] <= ref["boxes"][:, 3]).all()
    assert ref["boxes"][:, 0::2].min() >= 0 and ref["boxes"][:, 0::2].max() <= 80
    assert ref["boxes"][:, 1::2].min() >= 0 and ref["boxes"][:, 1::2].max() <= 60
    assert (ref["scores"][:-1] >= ref["scores"][1:]).all()
    for name, res in results.items():
        torch.testing.assert_close(res["boxes"], ref["boxes"], atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(res["scores"], ref["scores"], atol=1e-6, rtol=0, msg=name)
        assert torch.equal(res["labels"], ref["labels"]), name


def test_predict_list_input_and_threshold(predictor, rgb_image):
    array, path = rgb_image
    single = predictor.predict(path, threshold=0.0, top_k=5)
    both = predictor.predict([path, array], threshold=0.0, top_k=5)
    assert isinstance(both, list) and len(both) == 2
    for res in both:
        torch.testing.assert_close(res["boxes"], single["boxes"], atol=1e-5, rtol=0)
    # a threshold above every score leaves nothing
    none = predictor.predict(array, threshold=float(single["scores"].max()) + 1e-3)
    assert none["boxes"].shape == (0, 4) and none["labels"].numel() == 0


def test_predict_keeps_the_training_mode(predictor, rgb_image):
    predictor.train()
    try:
        predictor.predict(rgb_image[0], threshold=0.0)
        assert predictor.training
    finally:
        predictor.eval()


def test_predict_rejects_bad_inputs(predictor, tmp_path):
    from dino_detector.data.images import ImageReadError

    missing = tmp_path / "no_such_image.jpg"
    with pytest.raises(ImageReadError, match="no_such_image.jpg"):
        predictor.predict(str(missing))
    assert issubclass(ImageReadError, ValueError)
    with pytest.raises(ValueError):
        predictor.predict(torch.rand(60, 80))  # 2-D tensor
    with pytest.raises(ValueError):
        predictor.predict(torch.rand(4, 60, 80))  # 4 channels
    with pytest.raises(ValueError):
        predictor.predict(np.zeros((60, 80, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="unsupported"):
        predictor.predict(12345)


# ---------------------------------------------------------------------------------------------- persistence
def test_save_pretrained_and_from_pretrained_round_trip(predictor, tmp_path):
    predictor.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "model" / "config.json").is_file()

    loaded = DINOv2ObjectDetector.from_pretrained(tmp_path / "model").eval()

    assert loaded.category_ids == [1, 5, 9]
    assert loaded.class_names == ["a", "b", "c"]
    assert loaded.data_config.image_size == 84
    images = [torch.rand(3, 56, 70), torch.rand(3, 84, 60)]
    with torch.no_grad():
        a, b = predictor(images), loaded(images)
    outputs_close(a, b, atol=0)
    outputs_close(a, b, 1, 1, atol=0)


def test_checkpoint_round_trip(predictor, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": predictor.state_dict(), "metadata": predictor.metadata()}, path)
    loaded = DINOv2ObjectDetector.from_checkpoint(path).eval()
    images = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        outputs_close(predictor(images), loaded(images), atol=0)

    torch.save({"weights": predictor.state_dict()}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a dino_detector checkpoint"):
        DINOv2ObjectDetector.from_checkpoint(tmp_path / "other.pth")


def test_lora_model_round_trip(tmp_path):
    model = build_small_detector(num_classes=2, backbone_mode="lora", lora_last_n_blocks=2)
    perturb_head_(model)
    with torch.no_grad():  # make the adapters non-trivial (lora_B starts at zero)
        for n, p in model.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    model.eval()
    model.save_pretrained(tmp_path / "lora")
    loaded = DINOv2ObjectDetector.from_pretrained(tmp_path / "lora").eval()
    assert loaded.backbone_mode == "lora"
    image = torch.rand(1, 3, 56, 70)
    with torch.no_grad():
        outputs_close(model(image), loaded(image), atol=0)


def test_pretrained_auto_lora_model_round_trip(monkeypatch, tmp_path):
    import dino_detector.backbones.vit as dino

    original = dino.load_vit
    # stand-in for a hub download (no network): the tiny architecture with random weights
    monkeypatch.setattr(dino, "load_vit", lambda name, **_: original("tiny", pretrained=False))
    model = build_small_detector(num_classes=2, dino_model="facebook/dinov2-small", pretrained=True)
    assert model.backbone_mode == "lora"  # 'auto' with pretrained weights
    model.eval()
    model.save_pretrained(tmp_path / "model")
    loaded = DINOv2ObjectDetector.from_pretrained(tmp_path / "model").eval()
    image = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        outputs_close(model(image), loaded(image), atol=0)


def test_local_folder_backbone_model_round_trip(tmp_path):
    from dino_detector.backbones.vit import load_vit

    folder = tmp_path / "my-dinov2"
    load_vit("tiny", pretrained=False).save_pretrained(folder)
    model = build_small_detector(num_classes=2, dino_model=str(folder), pretrained=True, backbone_mode="full")
    model.eval()
    model.save_pretrained(tmp_path / "model")
    loaded = DINOv2ObjectDetector.from_pretrained(tmp_path / "model").eval()
    image = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        outputs_close(model(image), loaded(image), atol=0)


def test_two_stage_selects_proposals_is_padding_invariant_and_trains():
    from dino_detector.config import LossConfig
    from dino_detector.losses.criterion import build_criterion

    model = build_small_detector(num_classes=3, two_stage=True, num_feature_levels=3)
    perturb_head_(model)
    model.eval()
    small, large = torch.rand(3, 70, 90), torch.rand(3, 120, 150)
    with torch.no_grad():
        alone, batched = model([small]), model([small, large])
    outputs_close(alone, batched, 0, 0)
    enc = alone["enc_outputs"]
    assert enc["pred_logits"].shape == (1, 10, 3) and enc["pred_boxes"].shape == (1, 10, 4)
    assert ((enc["pred_boxes"] > 0) & (enc["pred_boxes"] < 1)).all()
    # proposals start on cell centres inside the image, never on padding
    assert ((batched["enc_outputs"]["pred_boxes"][0, :, :2] > 0.01)
            & (batched["enc_outputs"]["pred_boxes"][0, :, :2] < 0.99)).all()

    model.train()
    out = model([small, large])
    criterion = build_criterion(3, LossConfig())
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[0.3, 0.6, 0.2, 0.2]]), "labels": torch.tensor([2])}]
    losses = criterion(out, targets)
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(losses)
    weights = criterion.weight_dict(len(out["aux_outputs"]), with_enc=True)
    assert set(weights) == set(losses)
    sum(losses[k] * weights[k] for k in losses).backward()
    grad = model.proposals.class_head.layers[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
