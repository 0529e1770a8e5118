"""Text encoders named by the upstream yamls (`cond_stage_config.target`), fully offline.

Reproduces `FrozenCLIPEmbedder` (SD1.x) and `FrozenOpenCLIPEmbedder` (SD2.x) of lllyasviel/ControlNet's
`ldm/modules/encoders/modules.py`, plus the CLIP-skip and long-prompt behaviour of its `cldm/hack.py`
as constructor options. Weights come from the model checkpoint, never from a hub: the `version` and
`device` arguments are accepted so upstream yamls load, and otherwise ignored.
"""

import torch
from torch import nn

from .clip_text import CLIPTextTransformer
from .openclip_text import OpenCLIPTextModel
from .text_transformer import TextTransformerConfig
from .tokenizer import OPENAI_SPECIAL_TOKENS, OPENCLIP_SPECIAL_TOKENS, CLIPTokenizer

VIT_L_14 = TextTransformerConfig()  # OpenAI CLIP ViT-L/14 text tower (SD1.x)
VIT_H_14 = TextTransformerConfig(width=1024, layers=24, heads=16, act="gelu")  # OpenCLIP ViT-H/14 (SD2.x)
OPENCLIP_ARCHS = {"ViT-H-14": VIT_H_14}


class TextEncoder(nn.Module):
    """Prompt handling shared by both encoders (upstream: `AbstractEncoder`).

    A prompt becomes `long_prompt_chunks` windows of `max_length` tokens, each `[BOS] + up to
    max_length - 2 tokens + [EOS]` padded with `pad_id`; longer prompts are truncated. The windows are
    encoded independently and their embeddings concatenated along the token axis (1 window = upstream).
    """

    def __init__(self, tokenizer: CLIPTokenizer, config: TextTransformerConfig, max_length: int, pad_id: int,
                 long_prompt_chunks: int):
        super().__init__()
        if not 2 < max_length <= config.context_length:
            raise ValueError(f"max_length={max_length} must be in 3..{config.context_length} (the tower's positions)")
        if long_prompt_chunks < 1:
            raise ValueError(f"long_prompt_chunks={long_prompt_chunks} must be >= 1")
        self.tokenizer = tokenizer
        self.config = config
        self.max_length = max_length
        self.pad_id = pad_id
        self.long_prompt_chunks = long_prompt_chunks

    def tokenize(self, text: str | list[str]) -> torch.Tensor:
        """Prompts -> (B, long_prompt_chunks * max_length) int64 ids, on the CPU."""
        prompts = [text] if isinstance(text, str) else list(text)
        window = self.max_length - 2
        rows = []
        for prompt in prompts:
            ids = self.tokenizer.encode(prompt)
            row = []
            for start in range(0, window * self.long_prompt_chunks, window):
                row += self.tokenizer.wrap(ids[start : start + window], self.max_length, self.pad_id)
            rows.append(row)
        return torch.tensor(rows, dtype=torch.long)

    def forward(self, text: str | list[str]) -> torch.Tensor:
        """Prompts -> (B, chunks * T, width) embeddings on the module's device (T = max_length, 1 if pooled)."""
        tokens = self.tokenize(text).to(next(self.parameters()).device)
        batch = tokens.shape[0]
        z = self.encode_tokens(tokens.view(batch * self.long_prompt_chunks, self.max_length))
        return z.reshape(batch, -1, z.shape[-1])

    def encode(self, text: str | list[str]) -> torch.Tensor:
        """Alias of `forward`, the name LatentDiffusion.get_learned_conditioning calls."""
        return self(text)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, max_length) ids of single windows -> (N, T, width) embeddings."""
        raise NotImplementedError

    def freeze(self) -> None:
        """Inference only: eval mode and no gradients (what upstream does when `freeze=True`)."""
        self.eval()
        for param in self.parameters():
            param.requires_grad = False


class FrozenCLIPEmbedder(TextEncoder):
    """SD1.x text encoder: OpenAI CLIP ViT-L/14 text tower, EOS-padded 77-token windows.

    Args:
        version: upstream's hub id for the weights; ignored (weights come from the checkpoint).
        device: ignored; the module's placement decides (`.to(...)`).
        max_length: tokens per window, BOS and EOS included.
        freeze: call `freeze()` after construction; False trains the tower.
        layer: "last" (final-normed last layer), "pooled" (that output at the first EOS, shape (B, 1, C))
            or "hidden" (raw `hidden_states[layer_idx]`, 0 = embeddings, -1 = last block).
        layer_idx: required for layer="hidden".
        clip_skip: k gives `hidden_states[-k]` through the final LayerNorm, the common "CLIP skip"
            convention: 1 = the last layer (upstream), 2 = the penultimate one. Only with layer="last".
        long_prompt_chunks: windows per prompt, e.g. 3 gives 3 x 75 prompt tokens and 231 context tokens.
        text_config: overrides of the tower shape (`TextTransformerConfig` fields), e.g. a tiny test tower.
    """

    LAYERS = ("last", "pooled", "hidden")

    def __init__(self, version: str = "openai/clip-vit-large-patch14", device: str | None = None,
                 max_length: int = 77, freeze: bool = True, layer: str = "last", layer_idx: int | None = None,
                 clip_skip: int = 1, long_prompt_chunks: int = 1, text_config: dict | None = None):
        del version, device  # accepted for upstream yaml compatibility; see the class docstring
        config = VIT_L_14.with_overrides(text_config)
        if layer not in self.LAYERS:
            raise ValueError(f"layer={layer!r}; allowed: {self.LAYERS}")
        if layer == "hidden" and (layer_idx is None or abs(layer_idx) > config.layers):
            raise ValueError(f"layer='hidden' needs layer_idx with |layer_idx| <= {config.layers}, got {layer_idx}")
        if not 1 <= clip_skip <= config.layers or (clip_skip > 1 and layer != "last"):
            raise ValueError(f"clip_skip={clip_skip} must be in 1..{config.layers}, and > 1 only with layer='last'")
        tokenizer = CLIPTokenizer(special_tokens=OPENAI_SPECIAL_TOKENS)
        super().__init__(tokenizer, config, max_length, pad_id=tokenizer.eos_id, long_prompt_chunks=long_prompt_chunks)
        self.layer = layer
        self.layer_idx = layer_idx
        self.clip_skip = clip_skip
        # A ModuleDict only to give the checkpoint's `transformer.text_model.` path.
        self.transformer = nn.ModuleDict({"text_model": CLIPTextTransformer(config)})
        if freeze:
            self.freeze()

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        text_model = self.transformer.text_model
        if self.layer == "hidden":
            # hidden_states has layers + 1 entries (embeddings first), so a negative index counts from there.
            return text_model(tokens, num_layers=self.layer_idx % (self.config.layers + 1), final_norm=False)
        z = text_model(tokens, num_layers=self.config.layers + 1 - self.clip_skip, final_norm=True)
        if self.layer == "pooled":
            # The first EOS, found as the first maximum id, as transformers 4.19 pooled.
            return z[torch.arange(z.shape[0], device=z.device), tokens.argmax(dim=-1)].unsqueeze(1)
        return z


class FrozenOpenCLIPEmbedder(TextEncoder):
    """SD2.x text encoder: OpenCLIP ViT-H/14 text tower, zero-padded 77-token windows.

    Args:
        arch: open_clip model name; selects the tower shape (only "ViT-H-14" is known).
        version: upstream's pretrained tag for the weights; ignored (weights come from the checkpoint).
        device: ignored; the module's placement decides (`.to(...)`).
        max_length: tokens per window, BOS and EOS included.
        freeze: call `freeze()` after construction; False trains the tower.
        layer: "last" or "penultimate" (SD2's choice); either goes through `ln_final`, as upstream's
            `encode_with_transformer`. All blocks exist (and load) even when the last one is skipped.
        long_prompt_chunks: windows per prompt, as in FrozenCLIPEmbedder.
        text_config: overrides of the tower shape (`TextTransformerConfig` fields), e.g. a tiny test tower.
    """

    LAYERS = ("last", "penultimate")

    def __init__(self, arch: str = "ViT-H-14", version: str = "laion2b_s32b_b79k", device: str | None = None,
                 max_length: int = 77, freeze: bool = True, layer: str = "last", long_prompt_chunks: int = 1,
                 text_config: dict | None = None):
        del version, device  # accepted for upstream yaml compatibility; see the class docstring
        if arch not in OPENCLIP_ARCHS:
            raise ValueError(f"arch={arch!r}; known: {sorted(OPENCLIP_ARCHS)}")
        if layer not in self.LAYERS:
            raise ValueError(f"layer={layer!r}; allowed: {self.LAYERS}")
        config = OPENCLIP_ARCHS[arch].with_overrides(text_config)
        super().__init__(CLIPTokenizer(special_tokens=OPENCLIP_SPECIAL_TOKENS), config, max_length, pad_id=0,
                         long_prompt_chunks=long_prompt_chunks)
        self.layer = layer
        self.layer_idx = 1 if layer == "penultimate" else 0  # blocks left out at the end (upstream's name)
        self.model = OpenCLIPTextModel(config)
        if freeze:
            self.freeze()

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, num_layers=self.config.layers - self.layer_idx, final_norm=True)
