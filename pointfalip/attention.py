"""The attention paths of an open_clip ViT image encoder: its own blocks, FALIP's foveal block and ClearCLIP's block.

A `FovealPlan` says which blocks take the foveal bias, the bias itself (on the CLS query's attention logits toward
the patch tokens, in chosen heads) and the amplification γ of the head-sensitivity rule; `foveal_plan` builds it
from a caller's ``cls_bias``. `run_blocks` runs a span of the encoder's blocks under a plan (optionally doubling
the batch into a biased and a plain copy at the first foveal block); `run_block` is the one switch between the
block paths, where a fused or compiled path plugs in. `FalipCLIP` (`pointfalip.model`) embeds the
images, builds the plan and pools; the naive reference attention that the eager path must match stays in
``tests/test_model.py`` as the oracle.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from .errors import UnsupportedModel

__all__ = ["FovealPlan", "clearclip_block", "flat_cls_bias", "foveal_block", "foveal_plan", "run_block",
           "run_blocks"]


class FovealPlan(NamedTuple):
    """Which blocks of the image encoder take the foveal bias, and which bias."""

    layers: frozenset  # non-negative block indices that run the foveal path; empty: every block is open_clip's
    bias: Optional[torch.Tensor]  # (N, H|1, 1, L) float added to the CLS query's logits, L = 1 + patches
    amplify: float = 0.0  # γ of G'_h + γ(G'_h - G_h) on the CLS output of those blocks

    def with_plain_copy(self) -> "FovealPlan":
        """The plan of the batch doubled into a biased copy and then a plain copy (zero bias)."""
        return self._replace(bias=torch.cat([self.bias, torch.zeros_like(self.bias)]))


def flat_cls_bias(cls_bias: torch.Tensor, n: int, num_patches: int) -> torch.Tensor:
    """(N|1, gh, gw) or (N|1, gh*gw) -> (N, 1 + P) float32 with a zero column for the CLS key."""
    bias = cls_bias.reshape(cls_bias.shape[0], -1)
    if bias.shape[1] != num_patches:
        raise ValueError(f"cls_bias has {bias.shape[1]} patch weights but the model has {num_patches} patches")
    if bias.shape[0] not in (1, n):
        raise ValueError(f"cls_bias has batch {bias.shape[0]} for {n} images")
    return F.pad(bias.float(), (1, 0)).expand(n, -1)


def foveal_plan(cls_bias: torch.Tensor, layers: Sequence[int], n: int, num_patches: int, amplify: float = 0.0,
                head_mask: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None) -> FovealPlan:
    """The plan that adds ``cls_bias`` (`flat_cls_bias`'s shapes, on the model's device) in blocks ``layers``.

    head_mask: ``(H,)`` 1 for the heads that take the bias, 0 for the others (None: every head). keep: ``(N, K)``
    indices of the patches patch dropout kept (None: all), whose bias columns are kept with them.
    """
    bias = flat_cls_bias(cls_bias, n, num_patches)
    if keep is not None:
        bias = torch.cat([bias[:, :1], bias[:, 1:].gather(1, keep)], dim=1)
    bias = bias[:, None, None, :]  # (N, 1, 1, L): broadcast over heads and the single CLS query
    if head_mask is not None:
        bias = bias * head_mask[None, :, None, None]
    return FovealPlan(frozenset(layers), bias, amplify)


def run_blocks(transformer: nn.Module, x: torch.Tensor, plan: FovealPlan, stop: int,
               with_plain: bool = False) -> tuple[torch.Tensor, FovealPlan]:
    """Tokens ``(N, L, W)`` through ``transformer.resblocks[:stop]`` under ``plan``.

    with_plain: from the first foveal block on, the batch is doubled into a biased copy and then a plain copy
    (``(2N, L, W)``), so that the blocks before it run once for both. Returns the tokens and the plan of the
    blocks not yet run (the doubled one after the doubling).
    """
    blocks = transformer.resblocks
    batch_first = getattr(transformer, "batch_first", True)
    first = min(plan.layers) if plan.layers else len(blocks)
    for i in range(stop):
        if with_plain and i == first:
            x = torch.cat([x, x])
            plan = plan.with_plain_copy()
        x = run_block(blocks[i], x, i, plan, batch_first)
    return x, plan


def run_block(block: nn.Module, x: torch.Tensor, index: int, plan: FovealPlan, batch_first: bool = True
              ) -> torch.Tensor:
    """Block ``index`` on tokens ``(N, L, W)``: the foveal path where the plan says so, open_clip's block elsewhere.

    The one switch between block paths: a fused or compiled foveal path goes here.
    """
    if index in plan.layers:
        return foveal_block(block, x, plan.bias, plan.amplify)
    if batch_first:
        return block(x)
    return block(x.transpose(0, 1)).transpose(0, 1)


def _check_block(block: nn.Module, what: str) -> None:
    if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, nn.MultiheadAttention):
        raise UnsupportedModel(f"{what} needs open_clip's standard attention blocks, not {type(block).__name__}")


def foveal_block(block: nn.Module, x: torch.Tensor, bias: torch.Tensor, amplify: float) -> torch.Tensor:
    """One residual block whose CLS query row gets ``bias`` ``(N, H|1, 1, L)`` on its attention logits.

    The bias goes to SDPA as an (L, L) mask per image that is zero outside the CLS row, as in the authors'
    code; with amplify, the CLS row is also computed without it for G'_h + γ(G'_h - G_h).
    """
    _check_block(block, "foveal attention")
    attn = block.attn
    n, length, dim = x.shape
    heads = attn.num_heads
    head_dim = dim // heads
    y = block.ln_1(x)
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).view(n, length, 3, heads, head_dim).permute(
        2, 0, 3, 1, 4)
    mask = x.new_zeros(n, bias.shape[1], length, length)
    mask[:, :, :1] = bias.to(x.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if amplify:
        plain_cls = F.scaled_dot_product_attention(q[:, :, :1], k, v)
        cls = out[:, :, :1]
        out = torch.cat([cls + amplify * (cls - plain_cls), out[:, :, 1:]], dim=2)
    out = attn.out_proj(out.transpose(1, 2).reshape(n, length, dim))
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def clearclip_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ClearCLIP's last block (Lan et al., ECCV 2024, eq. 6-7): ``X = Proj(Attn_qq(LN(X)))``.

    The residual connection and the feed-forward branch are dropped and the attention is query-query:
    ``Attn_qq = softmax(Q Qᵀ / √d) V``, per head, with the block's own projections. What it returns goes to
    ``ln_post`` and the output projection as the encoder's own tokens do.
    """
    _check_block(block, "ClearCLIP")
    attn = block.attn
    n, length, dim = x.shape
    heads = attn.num_heads
    q, _, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).view(
        n, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, q, v)
    return attn.out_proj(out.transpose(1, 2).reshape(n, length, dim))
