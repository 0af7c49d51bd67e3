"""HungarianMatcher: batched matching, empty targets, and an assignment whose optimum is obvious."""
from __future__ import annotations

import torch

from dino_detector.losses.matcher import HungarianMatcher


def random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    """n valid (cx, cy, w, h) boxes well inside the unit square."""
    centres = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    sizes = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat([centres, sizes], -1)


def make_targets(counts: list[int], num_classes: int, g: torch.Generator) -> list[dict]:
    return [{"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": random_boxes(n, g)}
            for n in counts]


def test_batched_matching_equals_matching_each_image_alone():
    g = torch.Generator().manual_seed(0)
    batch, queries, classes = 3, 8, 4
    outputs = {"pred_logits": torch.randn(batch, queries, classes, generator=g),
               "pred_boxes": torch.cat([random_boxes(queries, g)[None] for _ in range(batch)])}
    counts = [3, 0, 5]
    targets = make_targets(counts, classes, g)
    matcher = HungarianMatcher()

    batched = matcher(outputs, targets)

    assert len(batched) == batch
    for i in range(batch):
        alone = matcher({k: v[i:i + 1] for k, v in outputs.items()}, [targets[i]])[0]
        rows, cols = batched[i]
        assert rows.dtype == cols.dtype == torch.int64
        assert len(rows) == len(cols) == min(queries, counts[i])
        assert torch.equal(rows, alone[0])
        assert torch.equal(cols, alone[1])
        # one-to-one: no query and no target used twice
        assert len(set(rows.tolist())) == len(rows)
        assert sorted(cols.tolist()) == list(range(counts[i]))


def test_more_targets_than_queries_matches_every_query_once():
    g = torch.Generator().manual_seed(1)
    outputs = {"pred_logits": torch.randn(1, 2, 3, generator=g), "pred_boxes": random_boxes(2, g)[None]}
    targets = make_targets([4], 3, g)
    rows, cols = HungarianMatcher()(outputs, targets)[0]
    assert rows.tolist() == [0, 1]
    assert len(set(cols.tolist())) == 2 and all(0 <= c < 4 for c in cols.tolist())


def test_all_targets_empty_gives_empty_index_tensors():
    g = torch.Generator().manual_seed(2)
    outputs = {"pred_logits": torch.randn(2, 5, 3, generator=g),
               "pred_boxes": torch.stack([random_boxes(5, g), random_boxes(5, g)])}
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)} for _ in range(2)]

    indices = HungarianMatcher()(outputs, targets)

    assert len(indices) == 2
    for rows, cols in indices:
        assert rows.numel() == 0 and cols.numel() == 0
        assert rows.dtype == cols.dtype == torch.int64


def test_predictions_equal_to_permuted_targets_recover_the_permutation():
    # 4 well separated targets; query perm[j] predicts exactly target j (box and class), the
    # remaining queries predict far-away boxes with low scores.
    target_boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.8, 0.2, 0.1, 0.15],
                                 [0.2, 0.8, 0.15, 0.1], [0.7, 0.7, 0.2, 0.2]])
    target_labels = torch.tensor([0, 2, 1, 2])
    perm = [5, 0, 3, 1]  # target j -> query perm[j]
    queries, classes = 6, 3
    pred_boxes = torch.full((queries, 4), 0.05)
    pred_boxes[:, :2] = 0.5
    pred_logits = torch.full((queries, classes), -6.0)
    for j, q in enumerate(perm):
        pred_boxes[q] = target_boxes[j]
        pred_logits[q, target_labels[j]] = 6.0
    outputs = {"pred_logits": pred_logits[None], "pred_boxes": pred_boxes[None]}
    targets = [{"labels": target_labels, "boxes": target_boxes}]

    rows, cols = HungarianMatcher()(outputs, targets)[0]

    assignment = dict(zip(cols.tolist(), rows.tolist()))
    assert assignment == {j: q for j, q in enumerate(perm)}


def test_one_to_many_matches_each_target_up_to_k_times_to_its_nearest_queries():
    """repeats=3: two targets, each with three near copies among 8 queries -> every copy is matched to its
    own target; two far-away queries stay unmatched. repeats=1 is the plain one-to-one matching."""
    target_boxes = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]])
    pred_boxes = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.76, 0.75, 0.2, 0.2], [0.26, 0.25, 0.2, 0.2],
                               [0.05, 0.95, 0.05, 0.05], [0.75, 0.75, 0.2, 0.2], [0.25, 0.27, 0.2, 0.2],
                               [0.95, 0.05, 0.05, 0.05], [0.75, 0.77, 0.2, 0.2]])
    outputs = {"pred_logits": torch.zeros(1, 8, 2), "pred_boxes": pred_boxes[None]}
    targets = [{"labels": torch.tensor([0, 1]), "boxes": target_boxes}]

    rows, cols = HungarianMatcher()(outputs, targets, repeats=3)[0]
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 0), (1, 1), (2, 0), (4, 1), (5, 0), (7, 1)]
    rows, cols = HungarianMatcher()(outputs, targets)[0]
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 0), (4, 1)]
