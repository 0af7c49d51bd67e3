"""Simple feature pyramid: level sizes, padding masks and valid ratios for any input size."""
from __future__ import annotations

import pytest
import torch

from dino_detector.backbones.pyramid import SimpleFeaturePyramid


def run_pyramid(num_levels: int, image_hw: list[tuple[int, int]], patch: int = 14):
    pyramid = SimpleFeaturePyramid(in_dim=12, dim=8, num_levels=num_levels)
    sizes = torch.tensor(image_hw, dtype=torch.float32)
    grid = torch.ceil(sizes / patch).long()
    hf, wf = int(grid[:, 0].max()), int(grid[:, 1].max())
    mask = torch.ones(len(image_hw), hf, wf, dtype=torch.bool)
    for i, (gh, gw) in enumerate(grid.tolist()):
        mask[i, :gh, :gw] = False
    fmap = torch.randn(len(image_hw), 12, hf, wf).masked_fill(mask[:, None], 0.0)
    return pyramid(fmap, mask, grid, sizes / patch)


def test_four_levels_have_strides_half_one_two_four_of_the_patch_grid():
    levels = run_pyramid(4, [(70, 99)])  # grid 5 x 8 (99 / 14 is not an integer)
    assert [tuple(lvl.tensor.shape[-2:]) for lvl in levels] == [(10, 16), (5, 8), (3, 4), (2, 2)]
    assert all(not lvl.mask.any() for lvl in levels)  # one image: nothing is padding
    # valid ratio: the image's extent over the padded map, e.g. 99/14/8 at the base level
    assert levels[1].valid_ratios[0, 0].item() == pytest.approx(99 / 14 / 8)
    assert levels[1].valid_ratios[0, 1].item() == pytest.approx(70 / 14 / 5)
    assert levels[2].valid_ratios[0, 1].item() == pytest.approx(70 / 14 / 2 / 3)


def test_masks_mark_the_smaller_image_padding_on_every_level():
    levels = run_pyramid(4, [(28, 28), (140, 112)])  # grids 2x2 and 10x8
    expected_valid = [(4, 4), (2, 2), (1, 1), (1, 1)]
    for lvl, (vh, vw) in zip(levels, expected_valid):
        valid = ~lvl.mask[0]
        assert valid.sum().item() == vh * vw
        assert valid[:vh, :vw].all()
        assert (lvl.tensor[0][:, lvl.mask[0]] == 0).all()  # padded cells carry zeros
        assert not lvl.mask[1].any()


def test_single_level_is_the_patch_grid_and_bad_level_counts_are_rejected():
    levels = run_pyramid(1, [(30, 45)])
    assert len(levels) == 1 and tuple(levels[0].tensor.shape[-2:]) == (3, 4)
    with pytest.raises(ValueError, match="num_feature_levels"):
        SimpleFeaturePyramid(12, 8, 5)


def test_backbone_feature_layers_concatenate_normed_intermediate_blocks():
    from dino_detector.backbones.vit import ViTBackbone, imagenet_normalise

    torch.manual_seed(0)
    backbone = ViTBackbone("tiny", pretrained=False, feature_layers=3).eval()
    assert backbone.layer_ids == [2, 4, 6] and backbone.num_channels == 3 * 192
    image = torch.rand(3, 56, 70)
    with torch.no_grad():
        fmap = backbone([image]).tensor  # [1, 576, 4, 5]
        pixels = imagenet_normalise(image)[None]
        states = backbone.vit(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert fmap.shape == (1, 576, 4, 5)
    for i, k in enumerate([2, 4, 6]):
        expected = backbone.vit.layernorm(states[k])[0, 1:].T.reshape(192, 4, 5)
        torch.testing.assert_close(fmap[0, 192 * i: 192 * (i + 1)], expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="backbone_feature_layers"):
        ViTBackbone("tiny", pretrained=False, feature_layers=7)
