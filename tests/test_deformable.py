"""Multi-scale deformable attention against a slow, explicit reference; gradients; padding masks."""
from __future__ import annotations

import math

import pytest
import torch

from dino_detector.models.deformable import MSDeformAttn, ms_deform_attn_core

SHAPES = [(3, 5), (4, 2)]  # two levels, non-square, of different shapes (h, w)


def reference_ms_deform_attn(value, shapes, locations, weights):
    """Loops over batch, query, head, level, point; bilinear interpolation by hand with zeros outside
    the map; align_corners=False convention: pixel coordinate = location * size - 0.5."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(batch, queries, heads, dim, dtype=value.dtype)
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(points):
                        x = locations[b, q, m, lvl, p, 0].item() * w - 0.5
                        y = locations[b, q, m, lvl, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        fx, fy = x - x0, y - y0
                        sample = torch.zeros(dim, dtype=value.dtype)
                        for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
                            for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                                if 0 <= xx < w and 0 <= yy < h:
                                    sample += wy * wx * value[b, starts[lvl] + yy * w + xx, m]
                        out[b, q, m] += weights[b, q, m, lvl, p].item() * sample
    return out.reshape(batch, queries, heads * dim)


def random_inputs(batch=2, queries=3, heads=2, dim=3, points=2, low=-0.3, high=1.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    levels = len(SHAPES)
    total = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, total, heads, dim, generator=g, dtype=torch.float64)
    locations = low + (high - low) * torch.rand(batch, queries, heads, levels, points, 2, generator=g,
                                                dtype=torch.float64)
    weights = torch.rand(batch, queries, heads, levels, points, generator=g, dtype=torch.float64)
    weights = weights / weights.sum(dim=(-1, -2), keepdim=True)
    return value, locations, weights


def test_core_matches_explicit_reference_in_float64():
    value, locations, weights = random_inputs()
    # some locations must fall outside [0, 1], so the zero padding is exercised
    assert (locations < 0).any() and (locations > 1).any()

    out = ms_deform_attn_core(value, SHAPES, locations, weights)
    expected = reference_ms_deform_attn(value, SHAPES, locations, weights)

    assert out.shape == (2, 3, 2 * 3)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_core_samples_exact_cell_values_at_cell_centres():
    # location (x + 0.5) / w, (y + 0.5) / h hits the centre of cell (y, x): no interpolation at all
    value, _, _ = random_inputs(batch=1, queries=1, heads=1, dim=2, points=1)
    h, w = SHAPES[1]
    y, x = 2, 1
    locations = torch.zeros(1, 1, 1, 2, 1, 2, dtype=torch.float64)
    locations[0, 0, 0, 1, 0] = torch.tensor([(x + 0.5) / w, (y + 0.5) / h])
    weights = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2, 1)
    out = ms_deform_attn_core(value, SHAPES, locations, weights)
    start = SHAPES[0][0] * SHAPES[0][1]
    torch.testing.assert_close(out[0, 0], value[0, start + y * w + x, 0], atol=1e-12, rtol=0)


def test_core_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    batch, queries, heads, dim, points = 1, 2, 2, 2, 2
    levels = len(SHAPES)
    total = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, total, heads, dim, generator=g, dtype=torch.float64)
    # pixel coordinates k + u with u in [0.2, 0.8]: away from the kinks of bilinear interpolation at
    # integer pixel coordinates; k from -1 (partly outside the map) to size - 1 (partly outside too)
    sizes = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float64).view(1, 1, 1, levels, 1, 2)
    k = torch.floor(torch.rand(batch, queries, heads, levels, points, 2, generator=g, dtype=torch.float64)
                    * (sizes + 1)) - 1
    u = 0.2 + 0.6 * torch.rand(k.shape, generator=g, dtype=torch.float64)
    locations = (k + u + 0.5) / sizes
    weights = torch.rand(batch, queries, heads, levels, points, generator=g, dtype=torch.float64)

    value.requires_grad_(True)
    locations.requires_grad_(True)
    weights.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, loc, wt: ms_deform_attn_core(v, SHAPES, loc, wt),
                                    (value, locations, weights), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("ref_dim", [2, 4], ids=["points", "boxes"])
def test_msdeformattn_ignores_values_at_padded_positions(ref_dim):
    torch.manual_seed(0)
    dim, heads, points = 8, 2, 3
    attn = MSDeformAttn(dim=dim, levels=1, heads=heads, points=points).double()
    with torch.no_grad():  # large random offsets so that samples reach the padded region
        attn.sampling_offsets.weight.normal_(0, 1.0)
        attn.attention_weights.weight.normal_(0, 0.5)
    batch, queries = 2, 4
    hf, wf = 4, 5
    # image 0 covers 3 x 3 cells of the padded 4 x 5 map; image 1 covers all of it
    valid = torch.zeros(batch, hf, wf, dtype=torch.bool)
    valid[0, :3, :3] = True
    valid[1] = True
    padding_mask = ~valid.flatten(1)
    valid_ratios = torch.tensor([[[3 / wf, 3 / hf]], [[1.0, 1.0]]], dtype=torch.float64)
    query = torch.randn(batch, queries, dim, dtype=torch.float64)
    ref = torch.rand(batch, queries, ref_dim, dtype=torch.float64) * 0.3 + 0.65  # near the far edges
    if ref_dim == 4:
        ref[..., 2:] = 0.4
    value = torch.randn(batch, hf * wf, dim, dtype=torch.float64)

    out = attn(query, ref, value, [(hf, wf)], valid_ratios, padding_mask)

    changed = value.clone()
    changed[padding_mask] = 100.0 * torch.randn(int(padding_mask.sum()), dim, dtype=torch.float64)
    out_changed = attn(query, ref, changed, [(hf, wf)], valid_ratios, padding_mask)
    torch.testing.assert_close(out_changed, out, atol=1e-12, rtol=0)

    # control: the same change without the mask does change image 0's output (samples do reach padding)
    unmasked = attn(query, ref, changed, [(hf, wf)], valid_ratios, None)
    unmasked_ref = attn(query, ref, value, [(hf, wf)], valid_ratios, None)
    assert (unmasked[0] - unmasked_ref[0]).abs().max() > 1e-3
    # and changing a valid position (cell (2, 2), the valid corner next to the padding) changes the output
    changed_valid = value.clone()
    changed_valid[0, 2 * wf + 2] += 10.0
    assert (attn(query, ref, changed_valid, [(hf, wf)], valid_ratios, padding_mask)[0] - out[0]).abs().max() > 1e-6


def test_msdeformattn_rejects_dim_not_divisible_by_heads():
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(dim=10, levels=1, heads=4, points=2)
