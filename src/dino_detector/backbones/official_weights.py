"""Load the official DINOv2 checkpoints (``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` from
facebookresearch/dinov2, no hub needed) into the transformers model of the same architecture.

Key names are mapped onto the transformers model (``blocks.{i}.attn.qkv`` split into query / key / value,
``ls1.gamma`` -> ``layer_scale1.lambda1``, SwiGLU ``w12`` split into gate / up, ...), for both the current
transformers names (``q_proj``, ``gate_proj``) and the older ones (``attention.query``, ``weights_in``).
Every key must be accounted for: missing, unexpected or mis-shaped tensors are one ValueError listing them.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")  # block_chunks > 0: blocks.<chunk>.<i>.
WRAPPER_PREFIXES = ("module.", "backbone.")  # DDP / DINOv2 training-checkpoint wrappers
SIMPLE = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
          "pos_embed": "embeddings.position_embeddings", "register_tokens": "embeddings.register_tokens",
          "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
          "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
          "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
BLOCK_SIMPLE = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"}


def _names(target: set[str]) -> dict[str, list[str] | str]:
    """The transformers names of one block's parts, as this transformers version spells them."""
    if "encoder.layer.0.attention.q_proj.weight" in target:
        return {"qkv": ["attention.q_proj", "attention.k_proj", "attention.v_proj"], "proj": "attention.o_proj",
                "w12": ["mlp.gate_proj", "mlp.up_proj"], "w3": "mlp.down_proj"}
    return {"qkv": ["attention.attention.query", "attention.attention.key", "attention.attention.value"],
            "proj": "attention.output.dense", "w12": ["mlp.weights_in"], "w3": "mlp.weights_out"}


def convert_official_state_dict(official: dict[str, torch.Tensor], target: set[str]) -> dict[str, torch.Tensor]:
    """Official DINOv2 names -> transformers names (``target``: the model's own keys, which fix the spelling)."""
    names = _names(target)
    out: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        for prefix in WRAPPER_PREFIXES:
            key = key[len(prefix):] if key.startswith(prefix) else key
        key = CHUNKED_BLOCK.sub(r"blocks.\1.", key)
        if key in SIMPLE:
            out[SIMPLE[key]] = value
            continue
        m = re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$", key)
        if not m:
            out[f"<unmapped> {key}"] = value
            continue
        i, part, kind = m.groups()
        block = f"encoder.layer.{i}."
        if f"{part}.{kind}" in BLOCK_SIMPLE:
            out[block + BLOCK_SIMPLE[f"{part}.{kind}"]] = value
        elif part in BLOCK_SIMPLE:
            out[f"{block}{BLOCK_SIMPLE[part]}.{kind}"] = value
        elif part in ("attn.qkv", "mlp.w12"):  # fused projections: split along the output dimension
            parts = names["qkv" if part == "attn.qkv" else "w12"]
            for name, chunk in zip(parts, value.chunk(len(parts), dim=0)):
                out[f"{block}{name}.{kind}"] = chunk.clone()
        elif part in ("attn.proj", "mlp.w3"):
            out[f"{block}{names['proj' if part == 'attn.proj' else 'w3']}.{kind}"] = value
        else:
            out[f"<unmapped> {key}"] = value
    return out


def read_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint file (a plain state dict, or one under 'model' / 'teacher')."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--dino_weights file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read --dino_weights {path}: {err}") from None
    for wrapper in ("teacher", "model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"--dino_weights {path} is not a state dict of tensors")
    return data


def load_official_weights(vit: torch.nn.Module, path: str | Path) -> None:
    """Copy an official DINOv2 checkpoint into ``vit`` (a transformers Dinov2 / Dinov2WithRegisters model)."""
    own = vit.state_dict()
    converted = convert_official_state_dict(read_official_checkpoint(path), set(own))
    unmapped = sorted(k.split(" ", 1)[1] for k in converted if k.startswith("<unmapped>"))
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(k for k in set(converted) - set(own) if not k.startswith("<unmapped>"))
    shapes = [f"{k}: file {tuple(converted[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in converted and converted[k].shape != own[k].shape]
    if unmapped or missing or unexpected or shapes:
        lines = [f"--dino_weights {path} does not fit the '{type(vit).__name__}' architecture of --dino_model "
                 f"(hidden {vit.config.hidden_size}, {vit.config.num_hidden_layers} layers); pass the matching "
                 "--dino_model (e.g. facebook/dinov2-small for dinov2_vits14_pretrain.pth)"]
        for title, items in (("keys not in the official DINOv2 layout", unmapped),
                             ("tensors of different shape", shapes), ("model tensors the file lacks", missing),
                             ("file tensors the model lacks", unexpected)):
            if items:
                more = f" ... and {len(items) - 6} more" if len(items) > 6 else ""
                lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:6]) + more)
        raise ValueError("\n".join(lines))
    vit.load_state_dict(converted)
