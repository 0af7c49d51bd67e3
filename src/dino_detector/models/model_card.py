"""The model card ``README.md`` written by ``save_pretrained``, in the layout of the DINOv2-OD model card
(overview, description, training data and procedure, performance, limitations, ethical considerations,
usage), filled from the model's own configuration and, when given, its run's config and measured metrics.
Nothing is claimed that the files do not hold: unknown facts are written as unknown."""
from __future__ import annotations

import datetime

from ..backbones.adapters import count_parameters

METRIC_ROWS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "precision", "recall", "f1")


def model_card(model, metrics: dict | None = None, run_config: dict | None = None) -> str:
    """Markdown text. ``metrics``: a val_metrics JSON dict; ``run_config``: the run's Config.to_dict()."""
    m = model.config
    trainable, total = count_parameters(model)
    names = ", ".join(model.class_names[:20]) + (" ..." if len(model.class_names) > 20 else "")
    train = (run_config or {}).get("train", {})
    data = (run_config or {}).get("data", {})
    loss = (run_config or {}).get("loss", {})
    adapter = (f"LoRA (rank {m.lora_rank}, alpha {m.lora_alpha}"
               + (f", last {m.lora_last_n_blocks} blocks" if m.lora_last_n_blocks else "") + ")"
               if model.backbone_mode == "lora" else model.backbone_mode)
    lines = [
        "# DINOv2 Object Detection Model Card", "",
        "## Model Overview", "",
        f"A DETR-style, end-to-end object detector for {model.num_classes} classes ({names}), made with "
        f"dino_detector on {datetime.date.today().isoformat()}.", "",
        "## Model Description", "",
        "### Components", "",
        f"1. **Backbone:** `{m.dino_model}` ({adapter}); {model.backbone.num_channels}-channel features, "
        f"patch {model.backbone.patch_size}.",
        f"2. **Transformer:** {m.encoder_layers} encoder and {m.decoder_layers} decoder layers, hidden size "
        f"{m.hidden_dim}, {m.num_heads} heads, {m.attention} attention over {m.num_feature_levels} feature "
        f"level(s), {m.num_queries} learned queries" + (", two-stage proposals" if m.two_stage else "") + ".",
        f"3. **Prediction heads:** {m.classifier} classification ({model.num_classes} classes) and box regression "
        "(cx, cy, w, h in 0..1 of the image).", "",
        f"Parameters: {total:,} ({trainable:,} trainable during fine-tuning).", "",
        "### Architecture Diagram", "",
        "```",
        "image -> backbone (ViT) -> feature pyramid -> transformer encoder -> decoder (queries) -> class + box heads",
        "```", "",
        "## Training Details", "",
        "### Training Data", "",
        f"- **Training annotations:** {data.get('train_annotations') or 'not recorded'}",
        f"- **Validation annotations:** {data.get('val_annotations') or 'not recorded'}",
        f"- **Classes:** {model.num_classes} ({names}); category ids {model.category_ids[:20]}"
        + (" ..." if model.num_classes > 20 else ""), "",
        "### Training Procedure", "",
    ]
    if train:
        lines += [
            "- **Method:** end-to-end set prediction with Hungarian matching",
            f"- **Losses:** {m.classifier} classification"
            + (f" (focal alpha {loss.get('focal_alpha')}, gamma {loss.get('focal_gamma')})" if loss else "")
            + ", L1 and GIoU box losses",
            f"- **Optimizer:** AdamW, lr {train.get('lr')}, weight decay {train.get('weight_decay')}",
            f"- **Batch size:** {train.get('batch_size')} (x {train.get('grad_accum_steps', 1)} accumulation steps)",
            f"- **Epochs:** {train.get('epochs')}" + (f", time budget {train['time_budget_min']} min"
                                                      if train.get("time_budget_min") else ""),
            f"- **Image size:** longest side {data.get('image_size') or 'preset sizes'}", ""]
    else:
        lines += ["Not recorded with this model (export from a training checkpoint to fill it in).", ""]
    lines += ["## Performance", ""]
    if metrics:
        lines += [f"Measured on {metrics.get('num_images', '?')} validation images with pycocotools "
                  f"(threshold metrics at score >= {metrics.get('score_threshold', 0.5)}):", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {metrics[k]:.3f} |" for k in METRIC_ROWS if isinstance(metrics.get(k), (int, float))
                  and metrics[k] >= 0]
        if isinstance(metrics.get("per_class"), dict):
            lines += ["", "| class | AP |", "|---|---|"]
            lines += [f"| {n} | {v:.3f} |" for n, v in metrics["per_class"].items() if v >= 0]
        lines.append("")
    else:
        lines += ["No measured metrics were saved with this model.", ""]
    lines += [
        "## Limitations", "",
        f"- Detects only its {model.num_classes} training classes; anything else is missed or mislabelled.",
        "- Scores are not calibrated probabilities; choose the threshold on your own validation data.",
        "- Accuracy outside the training data's domain (cameras, lighting, object sizes) is unknown.",
        "- Small objects are the hardest case for ViT backbones with a 14- or 16-pixel patch.", "",
        "## Ethical Considerations", "",
        "- Privacy: detections of people or their property can identify them; get consent and follow the law.",
        "- Bias: the model inherits the biases and gaps of its training data.",
        "- Misuse: do not use it for surveillance or for decisions about people without human review.",
        "- Errors: wrong or missed detections can cause harm in automated systems; keep a person in the loop.", "",
        "## Usage", "",
        "```python",
        "from dino_detector import DINOv2ObjectDetector",
        "",
        'model = DINOv2ObjectDetector.from_pretrained("path/to/this/folder")',
        'dets = model.predict("image.jpg", threshold=0.5)  # boxes (xyxy pixels), scores, labels, label_names',
        "```", "",
        "Command line: `python -m dino_detector.predict --checkpoint path/to/this/folder --images DIR`.", ""]
    return "\n".join(lines)
