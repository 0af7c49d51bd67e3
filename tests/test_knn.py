"""k-NN feature-quality metric: hand-checked voting and balanced accuracy, and crops from the real BCCD set."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from dino_detector.ssl.knn import balanced_accuracy, embed, knn_predict, knn_report, object_crops


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_knn_two_clusters():
    g = torch.Generator().manual_seed(0)
    # Class 0 around the x axis, class 1 around the y axis.
    a = torch.tensor([1.0, 0.0]) + 0.1 * torch.randn(10, 2, generator=g)
    b = torch.tensor([0.0, 1.0]) + 0.1 * torch.randn(10, 2, generator=g)
    train = F.normalize(torch.cat([a, b]), dim=1)
    labels = torch.tensor([0] * 10 + [1] * 10)
    queries = _unit([1.0, 0.05], [0.05, 1.0], [0.9, 0.2], [0.2, 0.9])
    pred = knn_predict(train, labels, queries, num_classes=2, k=5)
    assert pred.tolist() == [0, 1, 0, 1]
    assert pred.dtype == torch.int64


def test_knn_weighting_beats_majority():
    # One very close neighbour of class 0 vs two farther ones of class 1.
    train = _unit([1.0, 0.0], [0.6, 0.8], [0.6, -0.8])  # cos sims to query: 1.0, 0.6, 0.6
    labels = torch.tensor([0, 1, 1])
    query = _unit([1.0, 0.0])
    # Small temperature: exp(1/0.07) >> 2 * exp(0.6/0.07), so the close neighbour wins.
    assert knn_predict(train, labels, query, num_classes=2, k=3, temperature=0.07).tolist() == [0]
    # Huge temperature: every vote ~1, so the majority wins; shows the weighting is what decided above.
    assert knn_predict(train, labels, query, num_classes=2, k=3, temperature=1e4).tolist() == [1]


def test_knn_k_capped_at_train_size():
    train = _unit([1.0, 0.0], [0.0, 1.0])
    labels = torch.tensor([0, 1])
    pred = knn_predict(train, labels, _unit([1.0, 0.1], [0.1, 1.0]), num_classes=3, k=50)
    assert pred.tolist() == [0, 1]


def test_knn_bad_input():
    with pytest.raises(ValueError):
        knn_predict(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64), _unit([1.0, 0.0]), num_classes=2)
    with pytest.raises(ValueError):
        knn_predict(_unit([1.0, 0.0]), torch.tensor([5]), _unit([1.0, 0.0]), num_classes=2)


def test_balanced_accuracy_imbalanced():
    target = torch.tensor([0] * 8 + [1] * 2)
    pred = torch.tensor([0] * 8 + [1, 0])  # class 0: 8/8, class 1: 1/2
    bal, recalls = balanced_accuracy(pred, target, num_classes=3)
    assert bal == pytest.approx(0.75)
    assert recalls[:2] == pytest.approx([1.0, 0.5])
    assert math.isnan(recalls[2])  # class 2 never occurs: reported NaN, left out of the mean
    assert float((pred == target).float().mean()) == pytest.approx(0.9)


def _expected_count(ann_path, min_side):
    data = json.loads(ann_path.read_text())
    return sum(1 for a in data["annotations"]
               if not a.get("iscrowd", 0) and a["bbox"][2] >= min_side and a["bbox"][3] >= min_side)


@pytest.fixture(scope="module")
def bccd_val_crops(bccd):
    return object_crops(bccd["images"], bccd["val"], size=64, min_side=4)


def test_object_crops_bccd(bccd, bccd_val_crops):
    crops, labels, names = bccd_val_crops
    n = _expected_count(bccd["val"], 4)
    assert n > 0
    assert crops.shape == (n, 3, 64, 64) and crops.dtype == torch.float32
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert 0.0 <= float(crops.min()) and float(crops.max()) <= 1.0
    assert set(labels.unique().tolist()) <= {0, 1, 2}
    assert names == ["Platelets", "RBC", "WBC"]


def test_object_crops_min_side_and_context(bccd):
    # A large min_side keeps only the big (mostly WBC) boxes; context only changes pixels, not the count.
    n = _expected_count(bccd["val"], 150)
    crops, labels, _ = object_crops(bccd["images"], bccd["val"], size=16, min_side=150, context=0.25)
    assert crops.shape == (n, 3, 16, 16) and labels.shape == (n,)


def test_object_crops_no_annotations(tmp_path, bccd):
    ann = tmp_path / "empty.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg", "width": 8, "height": 8}],
                               "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(ValueError, match="empty.json"):
        object_crops(bccd["images"], ann)


def test_embed_unit_norm():
    crops = torch.rand(10, 3, 8, 8)
    emb = embed(lambda x: x.flatten(1)[:, :5] * 7.0, crops, batch_size=3)
    assert emb.shape == (10, 5)
    assert torch.allclose(emb.norm(dim=1), torch.ones(10), atol=1e-5)


def _colour_stats(x):
    """Trivially informative encoder: per-channel mean and std of the crop, centred so cosine is meaningful."""
    feats = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)
    return feats - feats.new_tensor([0.6, 0.5, 0.6, 0.1, 0.1, 0.1])


def test_knn_report_bccd(bccd_val_crops):
    crops, labels, names = bccd_val_crops
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(crops.shape[0], generator=g)
    half = crops.shape[0] // 2
    tr, va = perm[:half], perm[half:]
    report = knn_report(_colour_stats, (crops[tr], labels[tr]), (crops[va], labels[va]), names, k=10)
    assert set(report) == {"balanced_accuracy", "accuracy", "per_class_recall", "k", "num_train", "num_val"}
    assert 0.0 <= report["balanced_accuracy"] <= 1.0 and 0.0 <= report["accuracy"] <= 1.0
    assert set(report["per_class_recall"]) == set(names)
    assert all(0.0 <= r <= 1.0 for r in report["per_class_recall"].values() if not math.isnan(r))
    assert report["k"] == 10 and report["num_train"] == half and report["num_val"] == crops.shape[0] - half
    # Colour statistics separate blood cell types well above chance (1/3).
    assert report["balanced_accuracy"] > 0.4
