"""SSL building blocks checked against values recomputed here from the published formulas.

Tiny tensors, plain Python loops for the reference values, everything seeded.
"""
from __future__ import annotations

import math

import pytest
import torch

from dino_detector.ssl.dino_loss import DINOLoss
from dino_detector.ssl.heads import BatchStandardise, DINOHead
from dino_detector.ssl.ibot_loss import IBOTPatchLoss
from dino_detector.ssl.koleo import KoLeoLoss
from dino_detector.ssl.masking import batch_masks, block_mask
from dino_detector.ssl.mim_loss import PixelReconstructionLoss, patchify
from dino_detector.ssl.multicrop import MultiCrop
from dino_detector.ssl.vicreg import VICRegLoss, vicreg_terms


def _softmax(row: list[float], temp: float) -> list[float]:
    exps = [math.exp(v / temp) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _ce(p_t: list[float], s: list[float], temp: float) -> float:
    log_z = math.log(sum(math.exp(v / temp) for v in s))
    return sum(-p * (v / temp - log_z) for p, v in zip(p_t, s))


def test_dino_loss_matches_hand_formula_and_skips_same_view() -> None:
    torch.manual_seed(0)
    n_global, n_local, batch, k = 2, 2, 3, 5
    loss_fn = DINOLoss(k, student_temp=0.1)
    loss_fn.center.copy_(torch.randn(1, k))
    teacher_temp = 0.04
    teacher_logits = [torch.randn(batch, k) for _ in range(n_global)]
    student = [torch.randn(batch, k) for _ in range(n_global + n_local)]
    probs = [loss_fn.teacher_probs(t, teacher_temp) for t in teacher_logits]

    center = loss_fn.center[0].tolist()
    hand_probs = [[_softmax([v - c for v, c in zip(row, center)], teacher_temp) for row in t.tolist()]
                  for t in teacher_logits]
    for i in range(n_global):
        assert torch.allclose(probs[i], torch.tensor(hand_probs[i]), atol=1e-6)

    pair_losses = []
    for i in range(n_global):
        for j in range(n_global + n_local):
            if i == j:
                continue  # same view: skipped
            rows = [_ce(hand_probs[i][b], student[j][b].tolist(), 0.1) for b in range(batch)]
            pair_losses.append(sum(rows) / batch)
    assert len(pair_losses) == 6
    expected = sum(pair_losses) / len(pair_losses)
    assert loss_fn(student, probs).item() == pytest.approx(expected, rel=1e-5)

    # Fewer student crops than teacher crops: no view is shared, so every pair counts.
    only_local = student[2:3]
    expected_all = sum(sum(_ce(hand_probs[i][b], only_local[0][b].tolist(), 0.1) for b in range(batch)) / batch
                       for i in range(n_global)) / n_global
    assert loss_fn(only_local, probs).item() == pytest.approx(expected_all, rel=1e-5)


def test_dino_update_center_is_ema_of_batch_mean() -> None:
    torch.manual_seed(1)
    loss_fn = DINOLoss(5, center_momentum=0.9)
    start = torch.randn(1, 5)
    loss_fn.center.copy_(start)
    logits = torch.randn(6, 5)
    loss_fn.update_center(logits)
    cols = list(zip(*logits.tolist()))
    expected = [0.9 * c + 0.1 * (sum(col) / len(col)) for c, col in zip(start[0].tolist(), cols)]
    assert torch.allclose(loss_fn.center, torch.tensor([expected]), atol=1e-6)
    assert "center" in dict(loss_fn.named_buffers())


def test_sinkhorn_rows_sum_to_one_and_prototypes_are_balanced() -> None:
    torch.manual_seed(2)
    n, k = 12, 4
    logits = torch.randn(n, k) + torch.tensor([3.0, 0.0, 0.0, 0.0])  # softmax would favour prototype 0
    q = DINOLoss(k).sinkhorn_knopp(logits, teacher_temp=1.0, iterations=20)
    assert q.shape == (n, k)
    assert torch.allclose(q.sum(dim=1), torch.ones(n), atol=1e-5)
    assert torch.allclose(q.sum(dim=0), torch.full((k,), n / k), atol=1e-2)
    softmax_cols = torch.softmax(logits, dim=1).sum(dim=0)
    assert (q.sum(dim=0) - n / k).abs().max() < (softmax_cols - n / k).abs().max()


def _ibot_hand(student, probs, masks, temp):
    per_image = []
    for b in range(len(masks)):
        losses = [_ce(probs[b][t], student[b][t], temp) for t in range(len(masks[b])) if masks[b][t]]
        if losses:
            per_image.append(sum(losses) / len(losses))
    return sum(per_image) / len(per_image) if per_image else 0.0


def test_ibot_loss_uses_masked_tokens_only() -> None:
    torch.manual_seed(3)
    b, t, k = 3, 4, 5
    loss_fn = IBOTPatchLoss(k, student_temp=0.1)
    loss_fn.center.copy_(torch.randn(1, 1, k))
    teacher = torch.randn(b, t, k)
    probs = loss_fn.teacher_probs(teacher, 0.07)
    center = loss_fn.center[0, 0].tolist()
    hand_probs = [[_softmax([v - c for v, c in zip(tok, center)], 0.07) for tok in img] for img in teacher.tolist()]
    assert torch.allclose(probs, torch.tensor(hand_probs), atol=1e-6)

    masks = torch.tensor([[True, False, True, True], [False, False, False, False], [False, True, False, False]])
    student = torch.randn(b, t, k)
    loss = loss_fn(student, probs, masks)
    expected = _ibot_hand(student.tolist(), hand_probs, masks.tolist(), 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    changed = student.clone()
    changed[~masks] = torch.randn(int((~masks).sum()), k) * 10
    assert loss_fn(changed, probs, masks).item() == pytest.approx(loss.item(), rel=1e-6)
    assert loss_fn(student, probs, torch.zeros(b, t, dtype=torch.bool)).item() == 0.0

    start = loss_fn.center.clone()
    loss_fn.update_center(teacher, masks)
    masked_mean = teacher[masks].mean(dim=0)
    assert torch.allclose(loss_fn.center, 0.9 * start + 0.1 * masked_mean.view(1, 1, k), atol=1e-6)


def test_vicreg_terms_match_hand_formulas() -> None:
    torch.manual_seed(4)
    n, d, eps = 6, 3, 1e-4
    z1, z2 = torch.randn(n, d), torch.randn(n, d) * 0.5
    terms = vicreg_terms(z1, z2, eps=eps)

    def var_term(z):
        out = 0.0
        for j in range(d):
            col = [z[i][j] for i in range(n)]
            mean = sum(col) / n
            var = sum((v - mean) ** 2 for v in col) / (n - 1)
            out += max(0.0, 1.0 - math.sqrt(var + eps))
        return out / d

    def cov_term(z):
        means = [sum(z[i][j] for i in range(n)) / n for j in range(d)]
        total = 0.0
        for a in range(d):
            for c in range(d):
                if a != c:
                    cov = sum((z[i][a] - means[a]) * (z[i][c] - means[c]) for i in range(n)) / (n - 1)
                    total += cov ** 2
        return total / d

    a, b = z1.tolist(), z2.tolist()
    mse = sum((a[i][j] - b[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)
    assert terms["invariance"].item() == pytest.approx(mse, rel=1e-5)
    assert terms["variance"].item() == pytest.approx((var_term(a) + var_term(b)) / 2, rel=1e-5)
    assert terms["covariance"].item() == pytest.approx((cov_term(a) + cov_term(b)) / 2, rel=1e-5)

    total, same_terms = VICRegLoss(2.0, 3.0, 4.0)(z1, z2)
    expected_total = 2.0 * mse + 3.0 * same_terms["variance"].item() + 4.0 * same_terms["covariance"].item()
    assert total.item() == pytest.approx(expected_total, rel=1e-5)


def test_vicreg_variance_detects_collapse() -> None:
    torch.manual_seed(5)
    eps = 1e-4
    collapsed = torch.ones(8, 4) * 0.3
    assert vicreg_terms(collapsed, collapsed, eps=eps)["variance"].item() == pytest.approx(1 - math.sqrt(eps), rel=1e-6)
    z = torch.randn(4096, 4)
    z = (z - z.mean(0)) / z.std(0)  # exactly unit std per dimension
    assert vicreg_terms(z, z.clone(), eps=eps)["variance"].item() < 1e-3


def test_koleo_matches_nearest_neighbour_distances() -> None:
    torch.manual_seed(6)
    x = torch.randn(5, 3)
    rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in x.tolist()]
    nn_dist = [min(math.sqrt(sum((p - q) ** 2 for p, q in zip(rows[i], rows[j])))
                   for j in range(len(rows)) if j != i) for i in range(len(rows))]
    expected = -sum(math.log(dist + 1e-8) for dist in nn_dist) / len(nn_dist)
    assert KoLeoLoss()(x).item() == pytest.approx(expected, rel=1e-5)


def test_dino_head_shapes_and_frozen_magnitude() -> None:
    torch.manual_seed(7)
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, nlayers=3)
    assert head(torch.randn(4, 16)).shape == (4, 32)
    out = head(torch.randn(2, 3, 16))
    assert out.shape == (2, 3, 32)
    magnitude = head.last_layer.parametrizations.weight.original0
    assert not magnitude.requires_grad and torch.all(magnitude == 1)
    # Unit magnitude + normalised input: logits are cosines, bounded by 1.
    assert out.abs().max().item() <= 1.0 + 1e-5
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(32), atol=1e-5)
    out.sum().backward()
    assert magnitude.grad is None and head.last_layer.parametrizations.weight.original1.grad is not None
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and all(torch.all(m.bias == 0) for m in linears)


def test_block_mask_ratio_bound_and_determinism() -> None:
    min_block = 4
    for seed in range(8):
        for ratio in (0.1, 0.3, 0.5):
            budget = int(ratio * 14 * 14)
            mask = block_mask(14, 14, ratio, torch.Generator().manual_seed(seed), min_block=min_block)
            assert mask.shape == (14, 14) and mask.dtype == torch.bool
            assert budget - min_block < int(mask.sum()) <= budget
    a = block_mask(14, 14, 0.4, torch.Generator().manual_seed(11))
    b = block_mask(14, 14, 0.4, torch.Generator().manual_seed(11))
    assert torch.equal(a, b)

    m1 = batch_masks(6, 8, 8, generator=torch.Generator().manual_seed(3))
    m2 = batch_masks(6, 8, 8, generator=torch.Generator().manual_seed(3))
    assert m1.shape == (6, 64) and torch.equal(m1, m2)
    assert not batch_masks(4, 8, 8, probability=0.0, generator=torch.Generator().manual_seed(0)).any()
    always = batch_masks(4, 8, 8, ratio_range=(0.3, 0.3), probability=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.all(always.sum(dim=1) <= int(0.3 * 64)) and torch.all(always.sum(dim=1) > int(0.3 * 64) - 4)


def test_multicrop_counts_shapes_and_range() -> None:
    torch.manual_seed(8)
    crop = MultiCrop(global_size=32, local_size=16, n_local=3)
    image = torch.rand(3, 48, 40)
    torch.manual_seed(9)
    globals_, locals_ = crop(image)
    assert len(globals_) == 2 and len(locals_) == 3
    assert all(g.shape == (3, 32, 32) and g.dtype == torch.float32 for g in globals_)
    assert all(v.shape == (3, 16, 16) for v in locals_)
    assert all(0.0 <= float(v.min()) and float(v.max()) <= 1.0 for v in globals_ + locals_)
    torch.manual_seed(9)  # same seed -> same random crops: draws come from torch's global RNG
    again, again_locals = crop(image)
    assert all(torch.equal(x, y) for x, y in zip(again + again_locals, globals_ + locals_))


def test_multicrop_view_region_draws_every_view_of_an_image_from_one_window() -> None:
    """An image whose red and green channels are its x and y coordinates (0..1): a view's mean colour is
    where it was cut. With a window of 1 % of the image (a tenth of each side) every view of one call lies
    within 0.1 of the others, and across calls the windows cover the image; without a window the two global
    views are usually far apart."""
    h = w = 200
    image = torch.zeros(3, h, w)
    image[0] = torch.linspace(0, 1, w)[None, :].expand(h, w)
    image[1] = torch.linspace(0, 1, h)[:, None].expand(h, w)
    plain = dict(global_size=16, local_size=8, n_local=2, global_scale=(0.002, 0.005), local_scale=(0.0005, 0.001),
                 jitter_p=0.0, grayscale_p=0.0, solarize_p=0.0)
    torch.manual_seed(0)
    windowed, anywhere = MultiCrop(**plain, view_region=0.01), MultiCrop(**plain)
    centres, apart = [], 0
    for _ in range(40):
        globals_, locals_ = windowed(image)
        where = torch.stack([v[:2].mean((1, 2)) for v in globals_ + locals_])  # (x, y) of each view
        assert float((where.max(0).values - where.min(0).values).max()) <= 0.1 + 1e-3
        centres.append(where.mean(0))
        g1, g2 = anywhere(image)[0]
        apart += float((g1[:2].mean((1, 2)) - g2[:2].mean((1, 2))).abs().max()) > 0.2
    centres = torch.stack(centres)
    assert float(centres.min()) < 0.2 and float(centres.max()) > 0.8  # windows all over the image
    assert apart > 25
    with pytest.raises(ValueError, match="do not fit a view region"):
        MultiCrop(**{**plain, "global_scale": (0.02, 0.2)}, view_region=0.1)


def test_head_norms_remove_what_every_sample_shares() -> None:
    """Inputs = one large shared vector + small per-sample differences: without a norm every sample's
    bottleneck points the same way (cosine near 1) and the prototype logits hardly differ between samples;
    with ``center`` (the bottleneck's batch mean removed) or ``batch`` (every hidden layer standardised over
    the batch) the shared part is gone, the directions spread and the logits differ."""
    torch.manual_seed(0)
    x = 5.0 * torch.randn(1, 32) + 0.05 * torch.randn(16, 32)
    heads = {norm: DINOHead(32, out_dim=64, hidden_dim=64, bottleneck_dim=16, norm=norm)
             for norm in ("none", "center", "batch")}
    linears = [m for m in heads["none"].mlp if isinstance(m, torch.nn.Linear)]
    for head in heads.values():  # the same weights (BatchStandardise has none)
        for mine, theirs in zip([m for m in head.mlp if isinstance(m, torch.nn.Linear)], linears, strict=True):
            mine.load_state_dict(theirs.state_dict())
        head.last_layer.load_state_dict(heads["none"].last_layer.state_dict())

    def mean_cosine(head: DINOHead) -> float:
        z = head.bottleneck(x)
        return float((z @ z.t()).fill_diagonal_(0).sum() / (16 * 15))
    with torch.no_grad():
        assert mean_cosine(heads["none"]) > 0.99
        assert abs(mean_cosine(heads["center"])) < 0.1 and mean_cosine(heads["batch"]) < 0.9
        spread = {norm: float(head(x).std(0).mean()) for norm, head in heads.items()}
    assert spread["none"] < 0.1 * spread["center"] and spread["none"] < 0.1 * spread["batch"]
    with pytest.raises(ValueError, match="head norm must be one of"):
        DINOHead(32, norm="layer")


def test_batch_standardise_values() -> None:
    """Every feature over every leading position: mean 0, variance 1 (biased, as BatchNorm), for [N, D] and
    [B, T, D] alike; it has no parameters or buffers, so a teacher in eval mode normalises as the student."""
    torch.manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(4, 5, 6)
    y = BatchStandardise()(x).reshape(-1, 6)
    torch.testing.assert_close(y.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(0, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    flat = x.reshape(-1, 6)
    torch.testing.assert_close(BatchStandardise()(flat), y)
    assert not list(BatchStandardise().parameters()) and not list(BatchStandardise().buffers())

def test_patchify_orders_tokens_as_the_encoder_and_pixels_channels_last() -> None:
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = patchify(images, 2)  # a 2 x 3 grid of 2 x 2 patches
    assert patches.shape == (2, 6, 12)
    for b in range(2):
        for t in range(6):
            row, col = divmod(t, 3)
            want = [float(images[b, c, 2 * row + i, 2 * col + j]) for i in range(2) for j in range(2) for c in range(3)]
            assert patches[b, t].tolist() == want
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.zeros(1, 3, 5, 4), 2)


def _mim_hand(pred, images, masks, patch, norm_pix):
    """The per-image mean over masked patches of the squared error, averaged over images with a masked patch."""
    _, c, h, w = images.shape
    per_image = []
    for b, image_masks in enumerate(masks):
        losses = []
        for t, masked in enumerate(image_masks):
            if not masked:
                continue
            row, col = divmod(t, w // patch)
            target = [float(images[b, ch, patch * row + i, patch * col + j])
                      for i in range(patch) for j in range(patch) for ch in range(c)]
            if norm_pix:
                mean = sum(target) / len(target)
                var = sum((v - mean) ** 2 for v in target) / len(target)
                target = [(v - mean) / math.sqrt(var + 1e-6) for v in target]
            losses.append(sum((p - v) ** 2 for p, v in zip(pred[b][t], target)) / len(target))
        if losses:
            per_image.append(sum(losses) / len(losses))
    return sum(per_image) / len(per_image)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_pixel_reconstruction_loss_scores_masked_patches_only(norm_pix) -> None:
    torch.manual_seed(5)
    images = torch.randn(3, 3, 4, 4)  # 2 x 2 patches of 2 x 2 pixels
    pred = torch.randn(3, 4, 12)
    masks = torch.tensor([[True, False, False, True], [False, False, False, False], [False, True, True, True]])
    loss_fn = PixelReconstructionLoss(patch=2, norm_pix=norm_pix)
    loss = loss_fn(pred, images, masks)
    assert loss.item() == pytest.approx(_mim_hand(pred.tolist(), images, masks.tolist(), 2, norm_pix), rel=1e-5)
    changed = pred.clone()
    changed[~masks] = 100.0  # what the student predicts where it saw the pixels is not scored
    assert loss_fn(changed, images, masks).item() == pytest.approx(loss.item(), rel=1e-6)
    perfect = torch.where(masks[..., None], loss_fn.targets(images), pred)
    assert loss_fn(perfect, images, masks).item() == pytest.approx(0.0, abs=1e-10)
    nothing_masked = torch.zeros(3, 4, dtype=torch.bool)
    assert loss_fn(pred.requires_grad_(), images, nothing_masked).item() == 0.0
    if norm_pix:  # a patch's brightness and contrast are not asked for: only its structure
        brighter = images * 3.0 + 0.5
        assert loss_fn(pred, brighter, masks).item() == pytest.approx(loss.item(), rel=1e-4)


def test_student_skips_the_patch_head_where_no_patch_loss_reads_it() -> None:
    """Local crops (and every view without iBOT) ask for no patch logits: the head is not run on their tokens,
    and the CLS outputs are the same to the bit as with the patch logits computed."""
    from dino_detector.backbones.vit import load_vit
    from dino_detector.config.pretrain import MethodConfig
    from dino_detector.ssl.pretrainer import Student

    torch.manual_seed(0)
    method = MethodConfig()
    student = Student(load_vit("flexible-tiny"), method).eval()
    calls = []
    student.head.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    views = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        emb, cls_logits, patch_logits, pixels = student(views)
        lean = student(views, patch_logits=False)
    tokens = (96 // student.encoder.config.patch_size) ** 2
    assert patch_logits.shape == (2, tokens, method.out_dim) and pixels is None
    assert calls == [(2, tokens, 192), (2, 192), (2, 192)]  # the lean call ran the head on the CLS tokens only
    assert lean[2] is None
    assert torch.equal(lean[0], emb) and torch.equal(lean[1], cls_logits)
