"""Mix Transformer (MiT) encoder of GLPN / SegFormer (Xie et al. 2021), as used by Kim et al. 2022.

Attribute names follow the Hugging Face checkpoints (`patch_embeddings`, `block`,
`attention.self.query`, ...) so that published state dicts load without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import GLPNConfig

# transformers' GLPN builds every LayerNorm with the PyTorch default eps (1e-5), although its config
# says
# 1e-6. The published weights were evaluated that way; we match the reference numbers.
LAYER_NORM_EPS = 1e-5

_ACT = {
    "gelu": lambda: nn.GELU(),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
    "swish": lambda: nn.SiLU(),
    "tanh": lambda: nn.Tanh(),
    "sigmoid": lambda: nn.Sigmoid(),
}


def activation(name: str) -> nn.Module:
    return _ACT[name]()


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with overlapping windows, then LayerNorm over channels."""

    def __init__(self, *, patch_size: int, stride: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_channels, hidden_size, kernel_size=patch_size, stride=stride, padding=patch_size // 2
        )
        self.layer_norm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)  # (B, C, H, W)
        height, width = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        return self.layer_norm(x), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced sequence (PVT,
    SegFormer)."""

    def __init__(self, *, hidden_size: int, num_heads: int, sr_ratio: int, attn_drop: float = 0.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.attn_drop = attn_drop
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(hidden_size, hidden_size, kernel_size=sr_ratio, stride=sr_ratio)
            self.layer_norm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)

    def forward(
        self,
        x: torch.Tensor,
        height: int,
        width: int,
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`attentions`: when a list, softmax(QK^T / sqrt(d)) (B, nh, N, M) is computed explicitly
        and appended to it; otherwise the fused kernel runs and the map never exists."""
        B, N, C = x.shape
        q = (
            self.query(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        )  # (B, nh, N, hd)
        if self.sr_ratio > 1:
            kv = x.transpose(1, 2).reshape(B, C, height, width)
            kv = self.sr(kv).flatten(2).transpose(1, 2)  # (B, N / sr^2, C)
            kv = self.layer_norm(kv)
        else:
            kv = x
        k = (
            self.key(kv).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        )  # (B, nh, M, hd)
        v = self.value(kv).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        drop = self.attn_drop if self.training else 0.0
        if attentions is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, nh, N, hd)
        else:
            probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
            # (B, nh, N, M), returned after dropout as the reference does
            probs = F.dropout(probs, drop)
            attentions.append(probs)
            out = probs @ v  # (B, nh, N, hd)
        return out.transpose(1, 2).reshape(B, N, C)


class AttentionOutput(nn.Module):
    """Output projection of the attention (own module only to keep the checkpoint key
    `output.dense`)."""

    def __init__(self, *, hidden_size: int, drop: float = 0.0) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(x))


class Attention(nn.Module):
    def __init__(self, *, hidden_size: int, num_heads: int, sr_ratio: int, config: GLPNConfig):
        super().__init__()
        # `self.self` is the checkpoint's name for the attention proper.
        self.self = EfficientSelfAttention(
            hidden_size=hidden_size,
            num_heads=num_heads,
            sr_ratio=sr_ratio,
            attn_drop=config.attention_probs_dropout_prob,
        )
        self.output = AttentionOutput(hidden_size=hidden_size, drop=config.hidden_dropout_prob)

    def forward(
        self,
        x: torch.Tensor,
        height: int,
        width: int,
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # Positional: precision.Float32Island passes extra arguments on as *args.
        return self.output(self.self(x, height, width, attentions))


class DepthwiseConv(nn.Module):
    """3x3 depthwise convolution over the token grid: Mix-FFN's positional information."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        B, N, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, height, width)  # (B, C, H, W)
        return self.dwconv(x).flatten(2).transpose(1, 2)  # (B, N, C)


class MixFFN(nn.Module):
    """Linear -> depthwise 3x3 conv -> activation -> Linear."""

    def __init__(self, *, in_features: int, hidden_features: int, act: str, drop: float = 0.0):
        super().__init__()
        self.dense1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DepthwiseConv(hidden_features)
        self.act = activation(act)
        self.dense2 = nn.Linear(hidden_features, in_features)
        self.dropout = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.act(self.dwconv(self.dense1(x), height, width))
        return self.dropout(self.dense2(self.dropout(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample; identity at inference."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        return x * (keep >= self.p).to(x.dtype) / (1.0 - self.p)


class Block(nn.Module):
    """Pre-norm transformer layer: x + Attn(LN(x)), then x + MixFFN(LN(x))."""

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        drop_path: float,
        config: GLPNConfig,
    ) -> None:
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.attention = Attention(
            hidden_size=hidden_size, num_heads=num_heads, sr_ratio=sr_ratio, config=config
        )
        self.drop_path = DropPath(drop_path)
        self.layer_norm_2 = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.mlp = MixFFN(
            in_features=hidden_size,
            hidden_features=int(hidden_size * mlp_ratio),
            act=config.hidden_act,
            drop=config.hidden_dropout_prob,
        )

    def forward(
        self,
        x: torch.Tensor,
        height: int,
        width: int,
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.drop_path(self.attention(self.layer_norm_1(x), height, width, attentions))
        return x + self.drop_path(self.mlp(self.layer_norm_2(x), height, width))


def drop_path_rates(max_rate: float, layers: int) -> list[float]:
    """Stochastic depth rising linearly from 0 to max_rate over all layers (torch.linspace's values,
    in plain Python so that the encoder can be built on the meta device)."""
    if layers == 1:
        return [0.0]
    return [max_rate * i / (layers - 1) for i in range(layers)]


class MixTransformer(nn.Module):
    """Hierarchical encoder: per stage, patch embedding -> blocks -> LayerNorm -> (B, C, H, W)
    feature map."""

    def __init__(self, config: GLPNConfig) -> None:
        super().__init__()
        c = config
        dpr = drop_path_rates(c.drop_path_rate, sum(c.depths))
        self.patch_embeddings = nn.ModuleList(
            OverlapPatchEmbed(
                patch_size=c.patch_sizes[i],
                stride=c.strides[i],
                in_channels=c.num_channels if i == 0 else c.hidden_sizes[i - 1],
                hidden_size=c.hidden_sizes[i],
            )
            for i in range(c.num_encoder_blocks)
        )
        self.block = nn.ModuleList()
        start = 0
        for i in range(c.num_encoder_blocks):
            self.block.append(
                nn.ModuleList(
                    Block(
                        hidden_size=c.hidden_sizes[i],
                        num_heads=c.num_attention_heads[i],
                        sr_ratio=c.sr_ratios[i],
                        mlp_ratio=c.mlp_ratios[i],
                        drop_path=dpr[start + j],
                        config=c,
                    )
                    for j in range(c.depths[i])
                )
            )
            start += c.depths[i]
        self.layer_norm = nn.ModuleList(nn.LayerNorm(h, eps=LAYER_NORM_EPS) for h in c.hidden_sizes)

    def forward(
        self, pixel_values: torch.Tensor, attentions: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Every stage's feature map. `attentions`: a list to which each layer appends its
        attention map (slower: see EfficientSelfAttention.forward)."""
        features = []
        x = pixel_values
        for embed, blocks, norm in zip(self.patch_embeddings, self.block, self.layer_norm):
            x, height, width = embed(x)
            for blk in blocks:
                x = blk(x, height, width, attentions)
            x = norm(x)
            B, _, C = x.shape
            # (B, H*W, C) -> (B, C, H, W); kept channels_last in memory, which the next conv
            # prefers.
            x = x.reshape(B, height, width, C).permute(0, 3, 1, 2)
            features.append(x)
        return features
