"""Model FLOPs with ``torch.utils.flop_counter``, CPU attention included.

The counter knows the CUDA kernels of ``scaled_dot_product_attention`` but not the CPU one
(``_scaled_dot_product_flash_attention_for_cpu``), so on CPU every ViT's attention would count as free
(a DINOv2-S forward at 518 px: 59 GFLOP counted instead of ~93). Registering the same formula for it
makes CPU and GPU counts agree.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils import flop_counter as fc

_REGISTERED = False


def _register_cpu_attention() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    aten = torch.ops.aten

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
    def _forward(query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
    def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)

    _REGISTERED = True


class _TotalsOnly:
    """Stands in for the counter's per-module tracker, whose autograd hooks fail under
    ``torch.inference_mode`` (how every detector here runs inference); only the total is needed."""
    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (multiply-add = 2 FLOPs)."""
    _register_cpu_attention()
    counter = fc.FlopCounterMode(display=False)
    counter.mod_tracker = _TotalsOnly()
    with counter:
        fn()
    return counter.get_total_flops()
