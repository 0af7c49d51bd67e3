"""A short run's TensorBoard events hold every documented tag, read back with tensorboard's own reader."""
from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dino_detector.train import main as train_main


@pytest.fixture(scope="module")
def events(tiny_coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("tb")
    images, ann = str(tiny_coco["images"]), str(tiny_coco["annotations"])
    code = train_main(["--train_images", images, "--train_annotations", ann, "--val_images", images,
                       "--val_annotations", ann, "--dino_model", "tiny", "--no_pretrained", "--image_size", "96",
                       "--num_queries", "10", "--decoder_layers", "2", "--device", "cpu", "--num_workers", "0",
                       "--batch_size", "8", "--epochs", "2", "--eval_every", "1", "--log_frequency", "1",
                       "--log_images", "--log_images_frequency", "2", "--ema", "--experiment_name", "exp1",
                       "--output_dir", str(out)])
    assert code == 0
    acc = EventAccumulator(str(out / "tensorboard" / "exp1"),
                           size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc, out


def test_every_loss_term_learning_rate_metric_memory_and_throughput_is_logged(events):
    acc, _ = events
    scalars = set(acc.Tags()["scalars"])
    expected = {"train/loss", "train/loss_ce", "train/loss_bbox", "train/loss_giou",  # final layer and total
                "train/loss_ce_0", "train/loss_bbox_0", "train/loss_giou_0",  # the auxiliary decoder layer
                "lr/head", "lr/backbone",
                "val/AP", "val/AP50", "val/AP75", "val/APs", "val/APm", "val/APl", "val/AR100",
                "val/loss", "val/loss_ce", "val_ema/AP",
                "val_per_class_AP/person", "val_per_class_precision/person",
                "memory/cpu_rss_mb", "memory/cpu_peak_rss_mb", "perf/images_per_s",
                "epoch/loss", "epoch_perf/seconds", "epoch_perf/images_per_s", "epoch_memory/cpu_peak_rss_mb"}
    assert expected <= scalars, sorted(expected - scalars)
    assert len(acc.Scalars("train/loss")) == 4  # 16 images, batch 8, 2 epochs, a point every step
    assert all(e.value > 0 for e in acc.Scalars("perf/images_per_s"))
    assert all(e.value > 50 for e in acc.Scalars("memory/cpu_rss_mb"))  # a Python process with torch
    assert len(acc.Scalars("val/AP")) == 2  # epoch 1 and final


def test_histograms_of_parameters_and_gradients_and_drawn_images(events):
    acc, out = events
    histograms = acc.Tags()["histograms"]
    assert "params/decoder.layers.0" in histograms and "grads/decoder.layers.0" in histograms
    assert "params/backbone.vit.encoder.layer.5" in histograms
    images = acc.Images("images/train")
    assert len(images) == 2  # steps 2 and 4
    assert images[0].width == 96 or images[0].height == 96  # the training image, longer side 96
    assert (out / "val_metrics_ema_final.json").exists() and (out / "val_metrics_final.json").exists()
