"""Transformer decoder: N learned queries attend to the pixel-decoder pyramid and emit
class logits c_i and mask embeddings f_i at every layer (deep supervision)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn


def sine_position(x: Tensor, num_feats: int) -> Tensor:
    """DETR's 2-D sine encoding. x: (B, C, H, W) → (B, H*W, 2*num_feats)."""
    b, _, h, w = x.shape
    y_embed = torch.arange(1, h + 1, device=x.device, dtype=torch.float32)[:, None].expand(h, w) / (h + 1e-6)
    x_embed = torch.arange(1, w + 1, device=x.device, dtype=torch.float32)[None, :].expand(h, w) / (w + 1e-6)
    dim_t = torch.arange(num_feats, device=x.device, dtype=torch.float32)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    px = x_embed[..., None] * 2 * math.pi / dim_t
    py = y_embed[..., None] * 2 * math.pi / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=-1).flatten(2)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=-1).flatten(2)
    pos = torch.cat((py, px), dim=-1).flatten(0, 1)  # (H*W, 2*num_feats)
    return pos[None].expand(b, -1, -1).to(x.dtype)


class MLP(nn.Module):
    def __init__(self, din: int, dhid: int, dout: int, layers: int):
        super().__init__()
        dims = [din] + [dhid] * (layers - 1) + [dout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = Fn.relu(x)
        return x


class Attention(nn.Module):
    """Multi-head attention on batch-first (B, L, C) tensors: ``nn.MultiheadAttention``'s
    parameters, names and initialisation (checkpoints load either way), computed as three
    projections of contiguous inputs and ``scaled_dot_product_attention``. Why not
    ``nn.MultiheadAttention(batch_first=True)``: under CPU bf16 autocast it leaves its fast
    path and feeds transposed bf16 inputs to its projections (docs/benchmarks.md, section 2)."""

    def __init__(self, dim: int, nheads: int):
        super().__init__()
        self.nheads = nheads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)  # created first, as in nn.MultiheadAttention: same RNG draws
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """q: (B, N, C); k, v: (B, L, C); attn_mask: (B*heads, N, L) bool, True = not allowed → (B, N, C)."""
        b, n, c = q.shape
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)

        def heads(x: Tensor, w: Tensor, bias: Tensor) -> Tensor:
            return Fn.linear(x, w, bias).unflatten(-1, (self.nheads, c // self.nheads)).transpose(1, 2)

        allowed = None if attn_mask is None else ~attn_mask.unflatten(0, (b, self.nheads))
        out = Fn.scaled_dot_product_attention(heads(q, wq, bq), heads(k, wk, bk), heads(v, wv, bv), attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class DecoderLayer(nn.Module):
    """Cross-attention to pixels, self-attention among queries, FFN (Mask2Former order)."""

    def __init__(self, dim: int, nheads: int, ffn: int):
        super().__init__()
        self.cross = Attention(dim, nheads)
        self.self_attn = Attention(dim, nheads)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(inplace=True), nn.Linear(ffn, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, q: Tensor, qpos: Tensor, mem: Tensor, mpos: Tensor, attn_mask: Tensor | None) -> Tensor:
        """q, qpos: (B, N, C); mem, mpos: (B, HW, C); attn_mask: (B*heads, N, HW) bool or None."""
        q = self.norm1(q + self.cross(q + qpos, mem + mpos, mem, attn_mask))
        k = q + qpos
        q = self.norm2(q + self.self_attn(k, k, q))
        return self.norm3(q + self.ffn(q))


class TransformerDecoder(nn.Module):
    """forward(pyramid, F) → list (one per layer in training, the last one in eval) of (class logits (B, N, K+1),
    mask embeddings (B, N, C), mask logits (B, N, h, w)); the last entry is the final output.

    MaskFormer mode attends to the stride-32 map only; ``masked_attention`` cycles through
    strides 32/16/8 and restricts each query to the foreground of its previous mask
    (Mask2Former)."""

    def __init__(
        self,
        num_classes: int,
        in_dim: int,
        hidden_dim: int = 256,
        mask_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 1024,
        dec_layers: int = 6,
        masked_attention: bool = False,
    ):
        super().__init__()
        self.masked_attention = masked_attention
        self.aux_predictions = True  # per-layer heads in training (deep supervision); the trainer sets it
        self.num_levels = 3 if masked_attention else 1
        self.nheads = nheads
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_dim, hidden_dim, 1) if in_dim != hidden_dim else nn.Identity() for _ in range(self.num_levels)
        )
        self.level_embed = nn.Embedding(self.num_levels, hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_pos = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList(DecoderLayer(hidden_dim, nheads, dim_feedforward) for _ in range(dec_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def predict(self, q: Tensor, F: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q = self.norm(q)
        emb = self.mask_embed(q)
        return self.class_embed(q), emb, torch.einsum("bqc,bchw->bqhw", emb, F)

    def _attn_mask(self, masks: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, N, h, w) logits → (B*heads, N, h'*w') bool, True = not allowed to attend."""
        m = Fn.interpolate(masks.detach(), size=size, mode="bilinear", align_corners=False)
        block = (m.sigmoid() < 0.5).flatten(2)
        block[block.all(-1)] = False  # a query with an empty mask may look everywhere
        return block.repeat_interleave(self.nheads, dim=0)

    def forward(self, pyramid: list[Tensor], F: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        b = F.shape[0]
        mems, poss, sizes = [], [], []
        for i in range(self.num_levels):
            x = self.input_proj[i](pyramid[i])
            sizes.append(tuple(x.shape[-2:]))
            poss.append(sine_position(x, x.shape[1] // 2))
            mems.append(x.flatten(2).transpose(1, 2) + self.level_embed.weight[i][None, None])
        q = self.query_feat.weight[None].expand(b, -1, -1)
        qpos = self.query_pos.weight[None].expand(b, -1, -1)
        outputs = []
        masks = self.predict(q, F)[2] if self.masked_attention else None
        for i, layer in enumerate(self.layers):
            lvl = i % self.num_levels
            attn = self._attn_mask(masks, sizes[lvl]) if self.masked_attention else None
            q = layer(q, qpos, mems[lvl], poss[lvl], attn)
            if (self.training and self.aux_predictions) or self.masked_attention or i == len(self.layers) - 1:
                out = self.predict(q, F)  # intermediate heads only feed deep supervision
                masks = out[2]
                outputs.append(out)
        return outputs
