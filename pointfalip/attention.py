"""The attention paths of an open_clip ViT image encoder: its own blocks, FALIP's foveal block and ClearCLIP's block.

A `FovealPlan` says which blocks take the foveal bias, the bias itself (on the CLS query's attention logits toward
the patch tokens, in chosen heads) and the amplification γ of the head-sensitivity rule; `foveal_plan` builds it
from a caller's ``cls_bias``. `run_blocks` runs a span of the encoder's blocks under a plan (optionally doubling
the batch into a biased and a plain copy at the first foveal block); `run_block` is the one switch between the
block paths. `cls_block` runs a last block for the CLS token alone, which is all that pooled features need of
it. `FalipCLIP` (`pointfalip.model`) embeds the images, builds the plan, pools, and compiles the whole span with
``torch.compile`` when asked; the naive reference attention that the eager path must match stays in
``tests/test_model.py`` as the oracle.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from .errors import UnsupportedModel

__all__ = ["FovealPlan", "clearclip_block", "cls_block", "flat_cls_bias", "foveal_and_plain", "foveal_block",
           "foveal_plan", "is_standard_block", "kept_columns", "plan_after", "run_block", "run_blocks", "run_cls_block"]


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
                head_mask: Optional[torch.Tensor] = None) -> FovealPlan:
    """The plan that adds ``cls_bias`` (`flat_cls_bias`'s shapes, on the model's device) in blocks ``layers``.

    head_mask: ``(H,)`` 1 for the heads that take the bias, 0 for the others (None: every head).
    """
    bias = flat_cls_bias(cls_bias, n, num_patches)[:, None, None, :]  # (N, 1, 1, L): over heads, one CLS query
    if head_mask is not None:
        bias = bias * head_mask[None, :, None, None]
    return FovealPlan(frozenset(layers), bias, amplify)


def kept_columns(bias: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The plan's bias ``(N, H|1, 1, 1 + P)`` for the patches patch dropout kept (``keep``: ``(N, K)`` indices)."""
    index = keep[:, None, None, :].expand(-1, bias.shape[1], 1, -1)
    return torch.cat([bias[..., :1], bias[..., 1:].gather(3, index)], dim=3)


def plan_after(plan: FovealPlan, stop: int, with_plain: bool) -> FovealPlan:
    """The plan of the blocks from ``stop`` on after `run_blocks` ran those before it."""
    if with_plain and plan.layers and min(plan.layers) < stop:
        return plan.with_plain_copy()
    return plan


def run_blocks(transformer: nn.Module, x: torch.Tensor, plan: FovealPlan, stop: int,
               with_plain: bool = False) -> tuple[torch.Tensor, FovealPlan]:
    """Tokens ``(N, L, W)`` through ``transformer.resblocks[:stop]`` under ``plan``.

    with_plain: from the first foveal block on, the batch is doubled into a biased copy and then a plain copy
    (``(2N, L, W)``), so that the blocks before it run once for both (and that block once for all but the CLS
    token, `foveal_and_plain`). Returns the tokens and the plan of the blocks not yet run (`plan_after`).
    """
    blocks = transformer.resblocks
    batch_first = getattr(transformer, "batch_first", True)
    first = min(plan.layers) if plan.layers else len(blocks)
    for i in range(stop):
        if with_plain and i == first:
            doubled = plan.with_plain_copy()
            if is_standard_block(blocks[i]):
                x, plan = foveal_and_plain(blocks[i], x, plan.bias, plan.amplify), doubled
                continue
            x, plan = torch.cat([x, x]), doubled
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


def is_standard_block(block: nn.Module) -> bool:
    """Whether ``block`` is open_clip's residual block with `nn.MultiheadAttention` (what our own paths rewrite)."""
    return isinstance(block, ResidualAttentionBlock) and isinstance(block.attn, nn.MultiheadAttention)


def _check_block(block: nn.Module, what: str) -> None:
    if not is_standard_block(block):
        raise UnsupportedModel(f"{what} needs open_clip's standard attention blocks, not {type(block).__name__}")


def _in_projection(attn: nn.MultiheadAttention, y: torch.Tensor, rows: slice) -> torch.Tensor:
    """``y @ W[rows]ᵀ + b[rows]`` of the attention's packed q|k|v input projection."""
    bias = attn.in_proj_bias[rows] if attn.in_proj_bias is not None else None
    return F.linear(y, attn.in_proj_weight[rows], bias)


def foveal_block(block: nn.Module, x: torch.Tensor, bias: torch.Tensor, amplify: float) -> torch.Tensor:
    """One residual block whose CLS query row gets ``bias`` ``(N, H|1, 1, L)`` on its attention logits.

    The bias goes to SDPA as an (L, L) mask per image that is zero outside the CLS row, as in the authors'
    code; with amplify, the CLS row is also computed without it for G'_h + γ(G'_h - G_h).
    """
    _check_block(block, "foveal attention")
    return _rest_of_block(block, x, _foveal_attention(block, x, bias, amplify)[0])


def foveal_and_plain(block: nn.Module, x: torch.Tensor, bias: torch.Tensor, amplify: float = 0.0) -> torch.Tensor:
    """A first foveal block's output for the biased copy and then the plain copy of tokens ``(N, L, W)``: (2N, L, W).

    The bias is on the CLS query's row alone, so the two copies differ only in their CLS token here: the block
    runs once with the bias, and the plain copy takes its other rows with a CLS token of its own, from the same
    queries, keys and values without the bias.
    """
    _check_block(block, "foveal attention")
    out, plain_cls = _foveal_attention(block, x, bias, amplify, plain_cls=True)
    biased = _rest_of_block(block, x, out)
    plain = torch.cat([_rest_of_block(block, x[:, :1], plain_cls), biased[:, 1:]], dim=1)
    return torch.cat([biased, plain])


def _foveal_attention(block: nn.Module, x: torch.Tensor, bias: torch.Tensor, amplify: float,
                      plain_cls: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The attention output ``(N, H, L, d)`` of a foveal block (amplified where asked) and, with ``plain_cls`` or
    amplify, the CLS row's output without the bias ``(N, H, 1, d)`` (else None)."""
    attn = block.attn
    n, length, dim = x.shape
    heads = attn.num_heads
    y = block.ln_1(x)
    q, k, v = _in_projection(attn, y, slice(None)).view(n, length, 3, heads, dim // heads).permute(
        2, 0, 3, 1, 4).unbind()
    mask = x.new_zeros(n, bias.shape[1], length, length)
    mask[:, :, :1] = bias.to(x.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    plain = F.scaled_dot_product_attention(q[:, :, :1], k, v) if amplify or plain_cls else None
    if amplify:
        cls = out[:, :, :1]
        out = torch.cat([cls + amplify * (cls - plain), out[:, :, 1:]], dim=2)
    return out, plain


def _rest_of_block(block: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Tokens ``x`` ``(N, L', W)`` after the block, given their attention output ``(N, H, L', d)``: the output
    projection, the residual, the MLP (open_clip's order, with its layer scales)."""
    n, length, dim = x.shape
    x = x + block.ls_1(block.attn.out_proj(out.transpose(1, 2).reshape(n, length, dim)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def cls_block(block: nn.Module, x: torch.Tensor, bias: Optional[torch.Tensor] = None, amplify: float = 0.0
              ) -> torch.Tensor:
    """The CLS token ``(N, 1, W)`` that ``block`` makes of tokens ``(N, L, W)``: the rows of the block's output that
    pooled features read, with the foveal ``bias`` ``(N, H|1, 1, L)`` on its attention logits if given.

    Keys and values come from every token; the query, the output projection and the MLP run on the CLS token
    alone, so a last block costs about 2/12 of a whole one (its k|v projection). The other blocks of the encoder
    are unchanged and the CLS row is computed as `foveal_block` or open_clip computes it.
    """
    _check_block(block, "the CLS-token path")
    attn = block.attn
    n, length, dim = x.shape
    heads = attn.num_heads
    y = block.ln_1(x)
    q = _in_projection(attn, y[:, :1], slice(0, dim)).view(n, 1, heads, dim // heads).transpose(1, 2)
    k, v = _in_projection(attn, y, slice(dim, 3 * dim)).view(n, length, 2, heads, dim // heads).permute(
        2, 0, 3, 1, 4).unbind()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(x.dtype))
    if amplify and bias is not None:
        out = out + amplify * (out - F.scaled_dot_product_attention(q, k, v))
    return _rest_of_block(block, x[:, :1], out)


def run_cls_block(block: nn.Module, x: torch.Tensor, index: int, plan: FovealPlan, batch_first: bool = True
                  ) -> torch.Tensor:
    """Block ``index`` for the CLS token alone (`cls_block`), under the plan; a block of another kind runs whole."""
    if not is_standard_block(block):
        return run_block(block, x, index, plan, batch_first)[:, :1]
    if index in plan.layers:
        return cls_block(block, x, plan.bias, plan.amplify)
    return cls_block(block, x)


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
    q, _, v = _in_projection(attn, block.ln_1(x), slice(None)).view(
        n, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind()
    out = F.scaled_dot_product_attention(q, q, v)
    return attn.out_proj(out.transpose(1, 2).reshape(n, length, dim))
