"""The flexible encoder: any input size, maps at strides 8 / 16 / 32, and a drop-in detection backbone."""
from __future__ import annotations

import pytest
import torch

from conftest import build_small_detector
from dino_detector.backbones.resolve import resolve_backbone_mode, weights_source
from dino_detector.backbones.flexible import FlexibleEncoder


@pytest.fixture(scope="module", params=["flexible-tiny", "flexible-lite"])
def encoder(request):
    torch.manual_seed(0)
    return FlexibleEncoder(request.param).eval()


@pytest.mark.parametrize("size", [(224, 224), (333, 517), (640, 480)])
def test_maps_at_strides_8_16_32_for_any_input_size(encoder, size):
    h, w = size
    with torch.no_grad():
        maps = encoder.maps(torch.rand(1, 3, h, w))
    assert sorted(maps) == [8, 16, 32]
    ph, pw = -(-h // 16) * 16, -(-w // 16) * 16  # padded to the ViT grid
    for stride, fmap in maps.items():
        assert fmap.shape[-2:] == (-(-ph // stride), -(-pw // stride)), stride
        assert fmap.shape[-2] * stride >= h and fmap.shape[-1] * stride >= w  # the whole image is covered
    assert maps[16].shape[1] == maps[32].shape[1] == encoder.config.hidden_size
    assert torch.isfinite(maps[32]).all() and maps[16].std() > 0


def test_positions_are_computed_for_the_grid_not_learned(encoder):
    # nothing in the state dict depends on the input resolution
    assert not any("position" in name for name in encoder.state_dict())
    with torch.no_grad():
        out = encoder(pixel_values=torch.rand(2, 3, 48, 80))
    assert out.last_hidden_state.shape == (2, 1 + 3 * 5, 192)  # CLS + 3 x 5 grid


def test_masked_positions_take_the_mask_token(encoder):
    x = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, :4] = True
    with torch.no_grad():
        plain = encoder(pixel_values=x).last_hidden_state
        masked = encoder(pixel_values=x, bool_masked_pos=mask).last_hidden_state
    assert not torch.allclose(plain, masked)
    with torch.no_grad():
        unmasked = encoder(pixel_values=x, bool_masked_pos=torch.zeros_like(mask)).last_hidden_state
    assert torch.equal(plain, unmasked)


@pytest.mark.parametrize("name", ["flexible-tiny", "flexible-lite"])
def test_detector_on_the_flexible_encoder_is_independent_of_batch_padding(name):
    model = build_small_detector(num_classes=3, dino_model=name, backbone_mode="auto")
    assert model.backbone.patch_size == 16
    assert resolve_backbone_mode("auto", weights_source(name, pretrained=True)) == "full"  # no published weights: train it
    model.eval()
    small, large = torch.rand(3, 70, 90), torch.rand(3, 130, 150)
    with torch.no_grad():
        alone, batched = model([small]), model([small, large])
    assert torch.allclose(alone["pred_logits"][0], batched["pred_logits"][0], atol=1e-4)
    assert torch.allclose(alone["pred_boxes"][0], batched["pred_boxes"][0], atol=1e-4)


def test_lora_and_layer_decay_find_the_flexible_blocks():
    model = build_small_detector(num_classes=2, dino_model="flexible-tiny", backbone_mode="lora",
                                 lora_last_n_blocks=2)
    names = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {n.split(".encoder.layer.")[1].split(".")[0] for n in names} == {"4", "5"}


def test_stem_level_is_the_encoders_own_stride_8_map():
    from dino_detector.backbones.vit import ViTBackbone, imagenet_normalise

    torch.manual_seed(0)
    backbone = ViTBackbone("flexible-tiny", stem_level=True).eval()
    image = torch.rand(3, 70, 90)  # padded to 80 x 96: a 5 x 6 grid, a 10 x 12 stem map
    with torch.no_grad():
        feats = backbone([image])
        padded = torch.nn.functional.pad(imagenet_normalise(image), (0, 6, 0, 10))
        expected = backbone.vit.maps(padded[None])[8]
    assert feats.stem.shape == (1, 96, 10, 12) and feats.tensor.shape[-2:] == (5, 6)
    assert torch.allclose(feats.stem, expected, atol=1e-6)
    assert ViTBackbone("flexible-tiny").stem_channels == 0  # the default: no stem map
    with pytest.raises(ValueError, match="flexible encoder"):
        ViTBackbone("tiny", stem_level=True)


def test_detector_with_the_stem_level_is_independent_of_batch_padding():
    model = build_small_detector(num_classes=3, dino_model="flexible-tiny", num_feature_levels=4,
                                 fine_level="stem")
    assert "stem" in model.pyramid.blocks and "up2" not in model.pyramid.blocks
    model.eval()
    small, large = torch.rand(3, 70, 90), torch.rand(3, 130, 150)
    with torch.no_grad():
        alone, batched, as_tensor = model([small]), model([small, large]), model(small[None])
    assert torch.allclose(alone["pred_logits"][0], batched["pred_logits"][0], atol=1e-4)
    assert torch.allclose(alone["pred_boxes"][0], batched["pred_boxes"][0], atol=1e-4)
    assert torch.allclose(alone["pred_boxes"], as_tensor["pred_boxes"], atol=1e-4)  # the export path agrees


def test_stem_level_needs_the_x2_pyramid_level():
    with pytest.raises(ValueError, match="num_feature_levels >= 3"):
        build_small_detector(num_classes=2, dino_model="flexible-tiny", num_feature_levels=2, fine_level="stem")


def test_lite_blocks_attend_on_the_stride_32_grid_and_return_stride_16_tokens():
    """flexible-lite: its blocks see 1 + ceil(h/2) * ceil(w/2) tokens (a quarter), its output is the coarse
    token repeated over each 2 x 2 cell plus that cell's own stride-16 stem token."""
    torch.manual_seed(0)
    lite = FlexibleEncoder("flexible-lite").eval()
    seen = []
    lite.encoder.layer[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    x = torch.rand(1, 3, 80, 112)  # a 5 x 7 grid at stride 16 -> 3 x 4 at stride 32
    with torch.no_grad():
        out = lite(pixel_values=x, output_hidden_states=True)
        grid, _ = lite.embeddings.grid(x, None)
    assert seen == [torch.Size([1, 1 + 3 * 4, 192])]
    assert out.last_hidden_state.shape == (1, 1 + 5 * 7, 192)
    assert len(out.hidden_states) == 7 and all(s.shape == (1, 1 + 5 * 7, 192) for s in out.hidden_states)
    last = out.hidden_states[-1][0, 1:].T.reshape(192, 5, 7) - grid[0]  # the skip removed: 2 x 2 repeats
    assert torch.allclose(last[:, 0, 0], last[:, 1, 1], atol=1e-5)
    assert not torch.allclose(last[:, 0, 0], last[:, 0, 2], atol=1e-3)  # the next coarse cell differs
    assert torch.allclose(lite.layernorm(out.hidden_states[-1]), out.last_hidden_state, atol=1e-6)


def test_lite_encoder_is_a_quarter_of_the_tiny_encoders_cost():
    from benchmarks.flops import count_flops

    x = torch.rand(1, 3, 512, 512)
    with torch.no_grad():
        tiny, lite = (count_flops(lambda e=FlexibleEncoder(n).eval(): e(pixel_values=x))
                      for n in ("flexible-tiny", "flexible-lite"))
    assert lite < 0.25 * tiny
