"""``--dino_weights``: a state dict in the official DINOv2 layout (key names as published by
facebookresearch/dinov2, built here with seeded values) loads into the transformers model with every key
accounted for, and the loaded ViT computes what the official architecture computes; wrong files are clear
errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dino_detector.backbones.vit import ViTBackbone
from dino_detector.train import main as train_main

SMALL = dict(dim=384, depth=12, heads=6)  # dinov2_vits14
PATCH, GRID = 14, 37  # the released checkpoints: 518 px, 37 x 37 position embeddings


def official_state_dict(dim: int, depth: int, registers: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """dinov2_vit*14[_reg4]_pretrain.pth key names and shapes, seeded values."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape, scale=0.02):
        return torch.randn(*shape, generator=g) * scale

    sd = {"cls_token": t(1, 1, dim), "pos_embed": t(1, 1 + GRID * GRID, dim), "mask_token": t(1, dim),
          "patch_embed.proj.weight": t(dim, 3, PATCH, PATCH), "patch_embed.proj.bias": t(dim)}
    if registers:
        sd["register_tokens"] = t(1, registers, dim)
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + t(dim), b + "norm1.bias": t(dim),
                   b + "attn.qkv.weight": t(3 * dim, dim), b + "attn.qkv.bias": t(3 * dim),
                   b + "attn.proj.weight": t(dim, dim), b + "attn.proj.bias": t(dim),
                   b + "ls1.gamma": t(dim, scale=0.1), b + "norm2.weight": 1 + t(dim), b + "norm2.bias": t(dim),
                   b + "mlp.fc1.weight": t(4 * dim, dim), b + "mlp.fc1.bias": t(4 * dim),
                   b + "mlp.fc2.weight": t(dim, 4 * dim), b + "mlp.fc2.bias": t(dim),
                   b + "ls2.gamma": t(dim, scale=0.1)})
    sd.update({"norm.weight": 1 + t(dim), "norm.bias": t(dim)})
    return sd


def official_forward(sd: dict, x: torch.Tensor, dim: int, depth: int, heads: int) -> torch.Tensor:
    """The official DINOv2 ViT forward (no registers) at 518 px, written from its definition."""
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = torch.cat([sd["cls_token"].expand(len(x), -1, -1), tokens], 1) + sd["pos_embed"]
    b, n, _ = tokens.shape
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(tokens, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(
            b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, dim)
        tokens = tokens + sd[p + "ls1.gamma"] * F.linear(attn, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(tokens, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        tokens = tokens + sd[p + "ls2.gamma"] * h
    return F.layer_norm(tokens, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


@pytest.fixture(scope="module")
def vits14_file(tmp_path_factory):
    sd = official_state_dict(SMALL["dim"], SMALL["depth"])
    path = tmp_path_factory.mktemp("weights") / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    return path, sd


def test_official_vits14_loads_every_key_and_computes_the_official_forward(vits14_file):
    path, sd = vits14_file
    backbone = ViTBackbone("facebook/dinov2-small", pretrained=False, weights_file=str(path))
    vit = backbone.vit
    own = vit.state_dict()
    assert torch.equal(own["embeddings.position_embeddings"], sd["pos_embed"])
    assert torch.equal(own["embeddings.mask_token"], sd["mask_token"])
    assert torch.equal(own["layernorm.weight"], sd["norm.weight"])
    assert torch.equal(own["encoder.layer.5.layer_scale2.lambda1"], sd["blocks.5.ls2.gamma"])
    fused = torch.cat([own[f"encoder.layer.3.attention.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")])
    assert torch.equal(fused, sd["blocks.3.attn.qkv.weight"])  # the split is query, key, value in order
    x = torch.rand(1, 3, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = vit(pixel_values=x).last_hidden_state
        reference = official_forward(sd, x, **SMALL)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_registers_variant_and_detector_flag(vits14_file, tmp_path):
    from dino_detector import DINOv2ObjectDetector

    reg = official_state_dict(SMALL["dim"], SMALL["depth"], registers=4, seed=2)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save({"model": reg}, path)  # a wrapped state dict works too
    backbone = ViTBackbone("facebook/dinov2-with-registers-small", weights_file=str(path))
    assert torch.equal(backbone.vit.state_dict()["embeddings.register_tokens"], reg["register_tokens"])
    # through the detector: official weights count as pretrained, so 'auto' adapts them with LoRA
    model = DINOv2ObjectDetector(num_classes=3, dino_model="facebook/dinov2-small", pretrained=False,
                                 dino_weights=str(vits14_file[0]), num_queries=5, decoder_layers=1)
    assert model.backbone_mode == "lora"
    assert model.config.dino_weights == str(vits14_file[0])


def test_wrong_files_are_clear_errors(vits14_file, tmp_path):
    path, _ = vits14_file
    with pytest.raises(ValueError) as err:  # ViT-S weights into a ViT-B architecture
        ViTBackbone("facebook/dinov2-base", weights_file=str(path))
    assert "tensors of different shape" in str(err.value) and "hidden 768" in str(err.value)
    odd = tmp_path / "odd.pth"
    torch.save({**official_state_dict(192, 6), "head.weight": torch.zeros(3)}, odd)
    with pytest.raises(ValueError, match=r"keys not in the official DINOv2 layout \(1\): head.weight"):
        ViTBackbone("tiny", weights_file=str(odd))
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in official_state_dict(192, 6).items() if not k.startswith("blocks.5.")}, partial)
    with pytest.raises(ValueError, match=r"model tensors the file lacks \(\d+\): encoder\.layer\.5\."):
        ViTBackbone("tiny", weights_file=str(partial))
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read --dino_weights"):
        ViTBackbone("tiny", weights_file=str(text))
    with pytest.raises(FileNotFoundError):
        ViTBackbone("tiny", weights_file=str(tmp_path / "missing.pth"))


def test_train_command_reports_a_wrong_weights_file(tiny_coco, tmp_path, capsys):
    code = train_main(["--dino_model", "facebook/dinov2-base", "--dino_weights", str(tmp_path / "none.pth"),
                       "--train_images", str(tiny_coco["images"]), "--train_annotations",
                       str(tiny_coco["annotations"]), "--output_dir", str(tmp_path / "run")])
    assert code == 2
    assert "--dino_weights file not found" in capsys.readouterr().err
