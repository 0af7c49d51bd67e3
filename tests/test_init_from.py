"""--init_from: fine-tune a trained BCCD detector on a dataset that shares two of its classes and adds one."""
from __future__ import annotations

import json

import torch

from dino_detector.config import build_config
from dino_detector.engine.trainer import Trainer
from dino_detector.models.detector import ObjectDetector

# the trained_bccd fixture's model settings (conftest): a new run must build the same architecture
MODEL = dict(dino_model="tiny", pretrained=False, image_size=128, num_queries=20, decoder_layers=1)


def relabelled_bccd(bccd, tmp_path):
    """BCCD val with RBC and WBC kept (other ids) and Platelets renamed to a new class, Bacteria."""
    d = json.loads(bccd["val"].read_text())
    ids = {"RBC": 5, "WBC": 7, "Platelets": 9}
    old = {c["id"]: c["name"] for c in d["categories"]}
    d["categories"] = [{"id": 5, "name": "RBC"}, {"id": 7, "name": "WBC"}, {"id": 9, "name": "Bacteria"}]
    d["annotations"] = [{**a, "category_id": ids[old[a["category_id"]]]} for a in d["annotations"]]
    d["images"] = d["images"][:8]
    path = tmp_path / "relabelled.json"
    path.write_text(json.dumps(d))
    return path


def test_init_from_carries_every_matching_tensor_and_the_shared_class_rows(trained_checkpoint, bccd, tmp_path,
                                                                           caplog):
    source = ObjectDetector.from_checkpoint(trained_checkpoint).eval()
    assert source.class_names == ["Platelets", "RBC", "WBC"]
    ann = relabelled_bccd(bccd, tmp_path)
    cfg = build_config("standard", **MODEL, init_from=str(trained_checkpoint), train_images=str(bccd["images"]),
                       train_annotations=str(ann), val_fraction=0.25, output_dir=str(tmp_path / "run"),
                       device="cpu", num_workers=0, epochs=1)
    with caplog.at_level("INFO"):
        trainer = Trainer(cfg)
    model = trainer.model.eval()
    assert model.class_names == ["RBC", "WBC", "Bacteria"] and model.category_ids == [5, 7, 9]
    assert trainer.start_epoch == 0 and trainer.state.step == 0  # a fresh run, not a resume
    assert "classes carried over: RBC, WBC; new: Bacteria" in caplog.text
    indexed = model.class_indexed_tensors()
    src, new = source.state_dict(), model.state_dict()
    for name, tensor in new.items():
        if name in indexed:
            assert torch.equal(tensor[0], src[name][1]) and torch.equal(tensor[1], src[name][2]), name  # RBC, WBC
            assert not torch.equal(tensor[2], src[name][0]), name  # Bacteria: a fresh row, not Platelets'
        else:
            assert torch.equal(tensor, src[name]), name
    # before any step the shared classes' predictions are the source model's
    image = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = source(image), model(image)
    assert torch.equal(a["pred_boxes"], b["pred_boxes"])
    assert torch.equal(a["pred_logits"][..., 1:], b["pred_logits"][..., :2])


def test_init_from_and_resume_are_exclusive(trained_checkpoint, tmp_path):
    import pytest

    with pytest.raises(ValueError, match="--init_from starts a new run"):
        Trainer(build_config(**MODEL, init_from=str(trained_checkpoint), checkpoint=str(trained_checkpoint),
                             output_dir=str(tmp_path)))


def test_a_class_agnostic_source_gives_every_new_class_its_objectness_row(tmp_path, caplog):
    """A --proposals run has one class, "object": its class head rows are objectness, and each new class
    starts from them, so before any step every class scores each query as the source scored "object"."""
    from dino_detector.models.transfer import init_from

    torch.manual_seed(0)
    model_cfg = build_config("two-stage", **MODEL).model
    for name, first in (("object", True), ("person", False)):
        source = ObjectDetector(num_classes=1, class_names=[name], config=model_cfg).eval()
        with torch.no_grad():
            for tensor_name in source.class_indexed_tensors():
                source.get_parameter(tensor_name).normal_()  # rows unlike any fresh initialisation
        source.save_pretrained(tmp_path / name)
        model = ObjectDetector(num_classes=3, class_names=["a", "b", "c"], config=model_cfg).eval()
        with caplog.at_level("INFO"):
            report = init_from(model, tmp_path / name)
        src, new = source.state_dict(), model.state_dict()
        heads = sorted(model.class_indexed_tensors() - {"denoising.label_embed.weight"})
        assert "proposals.class_head" in {h.split(".layers")[0] for h in heads}  # the two-stage selection's too
        for tensor_name in heads:
            assert all(torch.equal(new[tensor_name][i], src[tensor_name][0]) for i in range(3)) == first, tensor_name
        # the denoising label embedding tells the classes apart: never three copies of one row
        assert not torch.equal(new["denoising.label_embed.weight"][0], new["denoising.label_embed.weight"][1])
        assert report.from_objectness == (["a", "b", "c"] if first else [])
        if first:
            image = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                a, b = source(image), model(image)
            torch.testing.assert_close(b["pred_boxes"], a["pred_boxes"])  # the same queries selected
            # (a 3-column matmul rounds unlike a 1-column one in the last bits)
            torch.testing.assert_close(b["pred_logits"], a["pred_logits"].expand_as(b["pred_logits"]))
    assert caplog.text.count("start from its objectness row") == 1


def test_a_training_run_folder_stands_for_its_best_checkpoint_else_its_final_one(trained_bccd, tmp_path):
    """Wherever a model is asked for (from_pretrained, open_backend, --init_from), a run's output_dir
    works: its dino_detector_best.pth, else dino_detector_final.pth."""
    import shutil

    import pytest

    from dino_detector.deploy.loader import open_backend
    from dino_detector.models.persistence import model_path, saved_model_config
    from dino_detector.models.transfer import load_source

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_bccd / "dino_detector_final.pth", run)
    assert model_path(run) == run / "dino_detector_final.pth"
    want = ObjectDetector.from_checkpoint(run / "dino_detector_final.pth").state_dict()
    got = ObjectDetector.from_pretrained(run).state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert open_backend(run, "torch").class_names == saved_model_config(run).class_names == ["Platelets", "RBC", "WBC"]
    assert set(load_source(run)[0]) == set(want)
    shutil.copy(trained_bccd / "dino_detector_final.pth", run / "dino_detector_best.pth")
    assert model_path(run) == run / "dino_detector_best.pth"  # the run's shipped checkpoint first
    with pytest.raises(FileNotFoundError, match="training run's folder"):
        ObjectDetector.from_pretrained(tmp_path / "empty")
