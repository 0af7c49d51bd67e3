"""What ``predict`` returns for one image: a dict (``boxes`` [N, 4] xyxy in original pixels, ``scores`` [N],
``labels`` [N] dataset category ids, ``label_names``) that also converts to COCO result entries and to
``supervision.Detections`` (the optional ``supervision`` extra; what RF-DETR returns)."""
from __future__ import annotations

import torch


class Prediction(dict):
    """One image's detections; ``dets["boxes"]`` etc. as before, plus the conversions below."""

    def to_coco(self, image_id: int = 0) -> list[dict]:
        """COCO results entries: image_id, category_id, bbox [x, y, w, h] pixels, score, category_name."""
        out = []
        for (x0, y0, x1, y1), score, cid, name in zip(self["boxes"].tolist(), self["scores"].tolist(),
                                                      self["labels"].tolist(), self["label_names"]):
            out.append({"image_id": image_id, "category_id": int(cid), "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": score, "category_name": name})
        return out

    def to_supervision(self):
        """A ``supervision.Detections``: xyxy, confidence, class_id (the dataset's category ids) and the class
        names in ``data["class_name"]``."""
        try:
            import supervision as sv
        except ImportError:
            raise ImportError("to_supervision needs the supervision package: pip install 'dino_detector[supervision]'"
                              ) from None
        import numpy as np
        return sv.Detections(xyxy=self["boxes"].numpy().astype(np.float32),
                             confidence=self["scores"].numpy().astype(np.float32),
                             class_id=self["labels"].numpy().astype(int),
                             data={"class_name": np.array(self["label_names"], dtype=object)})

    @classmethod
    def from_supervision(cls, detections) -> "Prediction":
        names = detections.data.get("class_name") if detections.data else None
        return cls(boxes=torch.as_tensor(detections.xyxy, dtype=torch.float32),
                   scores=torch.as_tensor(detections.confidence, dtype=torch.float32),
                   labels=torch.as_tensor(detections.class_id, dtype=torch.int64),
                   label_names=list(names) if names is not None else [str(c) for c in detections.class_id])
