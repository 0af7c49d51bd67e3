"""Windowed backbone attention: exact where it must be, local where it should be, resolved per weights."""
import pytest
import torch

from dino_detector.backbones.vit import ViTBackbone
from dino_detector.backbones.resolve import resolve_backbone, resolve_backbone_attention
from dino_detector.backbones.windowed import from_windows, global_block_ids, to_windows
from dino_detector.config import build_config
from dino_detector.models.detector import DINOv2ObjectDetector


def _pair(windows: int, global_blocks: int, name: str = "tiny"):
    torch.manual_seed(0)
    full = ViTBackbone(name, pretrained=False, feature_layers=1).eval()
    windowed = ViTBackbone(name, pretrained=False, feature_layers=1, windows=windows, global_blocks=global_blocks).eval()
    windowed.load_state_dict(full.state_dict())
    return full, windowed


def test_windows_round_trip_exactly():
    tokens = torch.randn(2, 1 + 6 * 8, 5)
    tiles = to_windows(tokens, 1, (6, 8), 2)
    assert tiles.shape == (8, 1 + 3 * 4, 5)
    # tile (row 1, col 0) of image 0 holds grid rows 3-5, columns 0-3
    grid = tokens[0, 1:].reshape(6, 8, 5)
    assert torch.equal(tiles[2, 1:], grid[3:, :4].reshape(12, 5))
    assert torch.equal(from_windows(tiles, 1, (6, 8), 2), tokens)


@pytest.mark.parametrize("windows,global_blocks", [(1, 2), (2, 6)])
def test_one_window_or_all_blocks_global_equals_full_attention(windows, global_blocks):
    full, windowed = _pair(windows, global_blocks)
    images = torch.rand(2, 3, 112, 140)
    assert torch.equal(full(images).tensor, windowed(images).tensor)


def test_windowed_blocks_keep_tiles_apart():
    """With only the last block global, a change in one tile reaches other tiles through that block alone:
    the output before it (block 5 of 6) of another tile must not move."""
    _, windowed = _pair(2, 1)
    vit, runner = windowed.vit, windowed.windowed
    images = torch.rand(1, 3, 112, 112)  # an 8 x 8 grid: four 4 x 4 tiles
    changed = images.clone()
    changed[..., :56, :56] = torch.rand(3, 56, 56)  # top-left tile only
    before, = runner(vit, images, 14, 1, [5])
    after, = runner(vit, changed, 14, 1, [5])
    grid_before, grid_after = before[0, 1:].reshape(8, 8, -1), after[0, 1:].reshape(8, 8, -1)
    assert not torch.allclose(grid_before[:4, :4], grid_after[:4, :4])
    assert torch.equal(grid_before[4:, 4:], grid_after[4:, 4:])
    assert torch.equal(grid_before[:4, 4:], grid_after[:4, 4:])
    assert global_block_ids(6, 1) == {5} and global_block_ids(12, 4) == {2, 5, 8, 11}


def test_windowed_grid_is_padded_to_whole_tiles_and_batching_does_not_change_outputs():
    _, windowed = _pair(2, 2)
    small, large = torch.rand(3, 100, 130), torch.rand(3, 200, 150)  # grids 8 x 10 and 15 x 11
    alone = windowed([small])
    assert alone.tensor.shape[-2:] == (8, 10)
    assert windowed([large]).tensor.shape[-2:] == (16, 12) and windowed([large]).mask[0, 15:].all()
    mixed = windowed([small, large])
    assert torch.equal(mixed.tensor[0, :, :8, :10], alone.tensor[0])
    assert torch.equal(mixed.mask[0, :8, :10], alone.mask[0]) and mixed.mask[0, 8:].all()
    batch = windowed(small[None])  # one-size tensor path: same features as the list path
    assert torch.equal(batch.tensor, alone.tensor) and torch.equal(batch.mask, alone.mask)


def test_lightweight_preset_resolves_its_layout_from_the_weights():
    cfg = build_config("lightweight", pretrained=False, dino_model="tiny", hidden_dim=32, dim_feedforward=64)
    model = DINOv2ObjectDetector(num_classes=3, config=cfg.model)
    assert model.config.backbone_attention == "windowed" and model.backbone.windowed is not None
    assert model.backbone.patch_size == 16 and model.backbone.grid_multiple == 2
    pretrained = resolve_backbone(build_config("lightweight").model)  # hub weights: not built here, only resolved
    assert pretrained.backbone_attention == "full" and pretrained.backbone_patch_size == 0
    assert resolve_backbone_attention("auto", True, dinov2=False) == "full"  # flexible / DINOv3: no windows
    with pytest.raises(ValueError, match="needs a DINOv2"):
        resolve_backbone_attention("windowed", True, dinov2=False)
    with pytest.raises(ValueError, match="backbone_attention must be"):
        resolve_backbone_attention("local", True, dinov2=True)


def test_windowed_detector_reloads_with_its_layout(tmp_path):
    torch.manual_seed(0)
    cfg = build_config("lightweight", pretrained=False, dino_model="tiny", hidden_dim=32, dim_feedforward=64)
    model = DINOv2ObjectDetector(num_classes=3, config=cfg.model).eval()
    model.save_pretrained(tmp_path / "m")
    again = DINOv2ObjectDetector.from_pretrained(tmp_path / "m").eval()
    image = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(model(image)["pred_boxes"], again(image)["pred_boxes"])
    assert again.backbone.patch_size == 16 and again.backbone.windowed is not None


def test_windowed_detector_exports_to_onnx_with_dynamic_sizes(tmp_path):
    """The tile padding depends on the image size: onnxruntime must match PyTorch at sizes other than the
    export example's (checked inside export_onnx, which raises when they disagree)."""
    pytest.importorskip("onnxruntime")
    from dino_detector.models.exportable import export_onnx

    torch.manual_seed(0)
    cfg = build_config("lightweight", pretrained=False, dino_model="tiny", hidden_dim=32, dim_feedforward=64)
    model = DINOv2ObjectDetector(num_classes=3, config=cfg.model).eval()
    report = export_onnx(model, tmp_path / "windowed.onnx")
    assert report["max_abs_diff"] < 1e-4 and len(report["checked"]) >= 2
