"""OpenAI CLIP text tower in the parameter layout of transformers 4.19 (SD1.x / ControlNet 1.0 files).

Keys, below the embedder's `transformer.`: `text_model.embeddings.{token_embedding, position_embedding,
position_ids}`, `text_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1, mlp.fc2,
layer_norm2}`, `text_model.final_layer_norm`.
"""

import torch
from torch import nn

from .text_transformer import TextTransformerConfig, causal_self_attention, mlp


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: TextTransformerConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.context_length, config.width)
        # transformers < 4.31 saved this buffer, so SD1.x checkpoints carry it; it is kept for the key layout
        # only. Positions are always 0..T-1 here, because some merged checkpoints hold float or corrupted ids.
        self.register_buffer("position_ids", torch.arange(config.context_length).unsqueeze(0), persistent=True)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.01)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, C)."""
        return self.token_embedding(tokens) + self.position_embedding.weight[: tokens.shape[1]]


class CLIPAttention(nn.Module):
    def __init__(self, config: TextTransformerConfig):
        super().__init__()
        self.heads = config.heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(config.width, config.width) for _ in range(4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(causal_self_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: TextTransformerConfig):
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.width, eps=config.eps)
        self.mlp = mlp(config, names=("fc1", "fc2"))
        self.layer_norm2 = nn.LayerNorm(config.width, eps=config.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPTextTransformer(nn.Module):
    """transformers' `CLIPTextModel.text_model`."""

    def __init__(self, config: TextTransformerConfig):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config)
        # A ModuleDict only to give the checkpoint's `encoder.layers.N` path.
        self.encoder = nn.ModuleDict({"layers": nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.layers))})
        self.final_layer_norm = nn.LayerNorm(config.width, eps=config.eps)

    def forward(self, tokens: torch.Tensor, num_layers: int, final_norm: bool) -> torch.Tensor:
        """(B, T) ids -> (B, T, C) output of the first `num_layers` blocks, optionally final-normed.

        `num_layers` = i gives transformers' `hidden_states[i]`; all layers plus the norm give
        `last_hidden_state`.
        """
        x = self.embeddings(tokens)
        for layer in self.encoder.layers[:num_layers]:
            x = layer(x)
        return self.final_layer_norm(x) if final_norm else x
