"""Text encoders: tokenizer ids, checkpoint key layouts, and numerics against transformers' CLIPTextModel.

The transformers / diffusers objects are independent references: weights go through diffusers' own
`single_file_utils` converters, and the reference tokenizer is transformers' `CLIPTokenizer` built from
the vendored merge list.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gzip  # noqa: E402
import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import MANIFESTS  # noqa: E402

from ldm.modules.encoders.modules import FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder  # noqa: E402
from ldm.modules.encoders.tokenizer import NUM_MERGES, VOCAB_PATH, CLIPTokenizer  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402

TINY = {"width": 32, "layers": 3, "heads": 4}
BOS, EOS = 49406, 49407

# Ids published with other CLIP tokenizers (OpenAI / open_clip outputs), BOS and EOS left out.
KNOWN_IDS = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "the black dog": [518, 1449, 1929],
    "a running dog": [320, 2761, 1929],
    "Truck's 123 wheels!": [4629, 568, 272, 273, 274, 8025, 256],
    "  WHEEL\n\t and fruit  ": [6744, 537, 5190],
    "a... 're we're don't 10": [320, 678, 982, 649, 982, 847, 713, 272, 271],
    "## #@ #...": [15483, 35062, 31491],
}

# Cross-checked against transformers. It skips HTML unescaping and quote straightening, which
# upstream (ftfy) does, so those are tested separately below.
PROMPTS = [
    "a photo of a cat",
    "A Photo  of a CAT",
    "",
    "   ",
    "best quality, masterpiece, 1girl, (extremely detailed:1.2), [bad hands]",
    "it's a dog's life; don't stop -- we'll see",
    "3.14159 + 2,718 = 5.85959 at 12:30pm on 2023-02-10",
    "tab\tand\nnewline\r\nand  many   spaces",
    "café naïve résumé Ærøskøbing",
    "東京タワー の 夜景, 서울, Москва",
    "emoji 🚀🔥👍🏽 and symbols → ± © ™ ½ ² Ⅻ",
    "cafe\u0301 (decomposed accent)",
    "<|startoftext|>hello<|endoftext|> world",
    "C++/C# & Rust's <html> {json: [1, 2]} @user #tag $100 50%",
    "a" * 200,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "masterpiece, " * 30,
    " ".join(f"word{i}" for i in range(60)),
    "ALL CAPS SHOUTING AND MiXeD cAsE",
    "zero\u200bwidth and\u00a0nbsp",
]


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every weight (LayerNorm gains and biases included) so that swapped parameters would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def hf_text_model(act: str, layers: int = TINY["layers"]):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=49408, hidden_size=TINY["width"], intermediate_size=4 * TINY["width"],
                            num_hidden_layers=layers, num_attention_heads=TINY["heads"], max_position_embeddings=77,
                            hidden_act=act, layer_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS,
                            attn_implementation="eager")
    return CLIPTextModel(config).eval()


def load_transformers_5(model, text_model_dict: dict):
    """diffusers' converters emit transformers 4.x names (`text_model.` prefix); 5.x dropped that level."""
    state = {k.removeprefix("text_model."): v for k, v in text_model_dict.items() if not k.endswith("position_ids")}
    model.load_state_dict(state, strict=True)
    return model


# ---------------------------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer()


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory, tokenizer):
    from transformers import CLIPTokenizer as HFCLIPTokenizer

    folder = tmp_path_factory.mktemp("clip_tokenizer")
    (folder / "vocab.json").write_text(json.dumps(tokenizer.encoder))
    merges = gzip.decompress(VOCAB_PATH.read_bytes()).decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    (folder / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    # transformers 5 spells the file arguments `vocab` / `merges` (4.x: vocab_file / merges_file).
    hf = HFCLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)
    assert len(hf) == 49408  # a silently broken (hub-less) tokenizer would have 2 entries
    return hf


def test_vocabulary_has_49408_entries(tokenizer):
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_id, tokenizer.eos_id) == (BOS, EOS)
    assert tokenizer.encoder["!"] == 0 and tokenizer.encoder["a</w>"] == 320
    assert tokenizer.encoder["<|startoftext|>"] == BOS and tokenizer.encoder["<|endoftext|>"] == EOS


@pytest.mark.parametrize("prompt", KNOWN_IDS)
def test_known_prompts_give_known_ids(tokenizer, prompt):
    assert tokenizer.encode(prompt) == KNOWN_IDS[prompt]


def test_a_photo_of_a_cat_padded_for_sd1():
    row = FrozenCLIPEmbedder(text_config=TINY).tokenize(["a photo of a cat"])[0].tolist()
    assert row == [BOS, 320, 1125, 539, 320, 2368, EOS] + [EOS] * 70


def test_ids_match_transformers(hf_tokenizer):
    ours = FrozenCLIPEmbedder(text_config=TINY).tokenize(PROMPTS)
    ref = hf_tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert ours.dtype == torch.long and ours.shape == (len(PROMPTS), 77)
    for prompt, row, ref_row in zip(PROMPTS, ours.tolist(), ref["input_ids"].tolist()):
        assert row == ref_row, prompt


def test_truncation_keeps_eos_last(tokenizer):
    ids = tokenizer.encode("masterpiece, " * 60)
    assert len(ids) > 75
    assert tokenizer.wrap(ids, 77, pad_id=0) == [BOS, *ids[:75], EOS]


def test_cleanup_unescapes_html_and_straightens_quotes(tokenizer):
    assert tokenizer.encode("salt &amp; pepper") == tokenizer.encode("salt & pepper")
    assert tokenizer.encode("\u201cdon\u2019t\u201d") == tokenizer.encode('"don\'t"')


def test_special_token_spellings_follow_each_upstream(tokenizer):
    assert tokenizer.encode("<|startoftext|>hello<|endoftext|>")[::2] == [BOS, EOS]
    openclip = FrozenOpenCLIPEmbedder(text_config=TINY).tokenizer
    assert openclip.encode("<start_of_text>truck<end_of_text>") == [BOS, 4629, EOS]


def test_padding_ids():
    sd1 = FrozenCLIPEmbedder(text_config=TINY).tokenize("a cat")[0]
    sd2 = FrozenOpenCLIPEmbedder(text_config=TINY).tokenize("a cat")[0]
    assert sd1[:4].tolist() == sd2[:4].tolist() == [BOS, 320, 2368, EOS]
    assert (sd1[4:] == EOS).all() and (sd2[4:] == 0).all()


# ----------------------------------------------------------------------------------- checkpoint layouts


@pytest.mark.parametrize("encoder, manifest", [(FrozenCLIPEmbedder, "cldm_v15"), (FrozenOpenCLIPEmbedder, "cldm_v21")])
def test_keys_and_shapes_match_released_checkpoints(encoder, manifest):
    expected = json.loads((MANIFESTS / f"{manifest}.json").read_text())
    expected = {k: v for k, v in expected.items() if k.startswith("cond_stage_model.")}
    with torch.device("meta"):
        model = encoder()
    ours = {f"cond_stage_model.{k}": list(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    if encoder is FrozenCLIPEmbedder:
        assert model.state_dict()["transformer.text_model.embeddings.position_ids"].dtype == torch.int64


def test_sd21_yaml_params_are_accepted():
    model = instantiate_from_config({
        "target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
        "params": {"freeze": True, "layer": "penultimate", "text_config": TINY},
    })
    assert isinstance(model, FrozenOpenCLIPEmbedder) and model.layer_idx == 1
    assert not model.training and not any(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- numerics vs transformers


@pytest.fixture(scope="module")
def sd1_pair():
    """Our tiny SD1 encoder and the transformers model holding the same (diffusers-converted) weights."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    ours = randomize_(FrozenCLIPEmbedder(text_config=TINY))
    checkpoint = {f"cond_stage_model.{k}": v for k, v in ours.state_dict().items()}
    ref = load_transformers_5(hf_text_model("quick_gelu"), convert_ldm_clip_checkpoint(checkpoint))
    return ours, ref


@pytest.fixture(scope="module")
def prompts_and_tokens():
    prompts = ["a photo of a cat", "masterpiece, best quality, a castle on a hill at dusk", "", "x " * 90]
    return prompts, FrozenCLIPEmbedder(text_config=TINY).tokenize(prompts)


def sd1_variant(sd1_pair, **options) -> FrozenCLIPEmbedder:
    """A differently configured encoder with the weights of the shared SD1 pair."""
    encoder = FrozenCLIPEmbedder(text_config=TINY, **options)
    encoder.load_state_dict(sd1_pair[0].state_dict())
    return encoder


@pytest.mark.parametrize(
    "options, reference",
    [
        ({}, lambda out, m: out.last_hidden_state),
        ({"layer": "pooled"}, lambda out, m: out.pooler_output[:, None]),
        ({"layer": "hidden", "layer_idx": -2}, lambda out, m: out.hidden_states[-2]),
        ({"layer": "hidden", "layer_idx": 1}, lambda out, m: out.hidden_states[1]),
        ({"layer": "hidden", "layer_idx": 0}, lambda out, m: out.hidden_states[0]),
        ({"clip_skip": 2}, lambda out, m: m.final_layer_norm(out.hidden_states[-2])),
        ({"clip_skip": 3}, lambda out, m: m.final_layer_norm(out.hidden_states[-3])),
    ],
    ids=["last", "pooled", "hidden-2", "hidden1", "hidden0", "clip_skip2", "clip_skip3"],
)
def test_sd1_matches_transformers(sd1_pair, prompts_and_tokens, options, reference):
    prompts, tokens = prompts_and_tokens
    encoder, ref_model = sd1_variant(sd1_pair, **options), sd1_pair[1]
    with torch.no_grad():
        ours = encoder(prompts)
        ref = reference(ref_model(input_ids=tokens, output_hidden_states=True), ref_model)
    assert ours.shape == ref.shape
    assert relative_error(ours, ref) <= 1e-5


@pytest.mark.parametrize("layer", ["last", "penultimate"])
def test_openclip_matches_transformers(prompts_and_tokens, layer):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    prompts = prompts_and_tokens[0]
    ours = randomize_(FrozenOpenCLIPEmbedder(layer=layer, text_config=TINY), seed=1)
    checkpoint = {f"cond_stage_model.{k}": v for k, v in ours.state_dict().items()}
    ref_model = hf_text_model("gelu")
    converted = convert_open_clip_checkpoint(ref_model, checkpoint)
    converted.pop("text_projection.weight", None)  # CLIPTextModel has no projection; SD never uses it
    load_transformers_5(ref_model, converted)
    with torch.no_grad():
        out = ref_model(input_ids=ours.tokenize(prompts), output_hidden_states=True)
        ref = out.last_hidden_state if layer == "last" else ref_model.final_layer_norm(out.hidden_states[-2])
        assert relative_error(ours(prompts), ref) <= 1e-5


# ------------------------------------------------------------------------------------------- options


def test_long_prompt_mode_concatenates_three_windows(sd1_pair, tokenizer):
    prompt = " ".join(["cat", "dog", "red", "sky"] * 20)  # 80 tokens: windows of 75 + 5 + 0
    ids = tokenizer.encode(prompt)
    assert len(ids) == 80
    long = sd1_variant(sd1_pair, long_prompt_chunks=3)
    tokens = long.tokenize([prompt, "a cat"])
    assert tokens.shape == (2, 231)
    windows = tokens[0].view(3, 77).tolist()
    assert windows[0] == [BOS, *ids[:75], EOS]
    assert windows[1] == [BOS, *ids[75:], EOS] + [EOS] * 70
    assert windows[2] == [BOS, EOS] + [EOS] * 75
    with torch.no_grad():
        z = long([prompt, "a cat"])
        assert z.shape == (2, 231, TINY["width"])
        # The first window alone is exactly what the one-window (upstream) encoder sees.
        torch.testing.assert_close(z[:, :77], sd1_pair[0]([prompt, "a cat"]))
    pooled = sd1_variant(sd1_pair, long_prompt_chunks=3, layer="pooled")
    assert pooled(["a cat"]).shape == (1, 3, TINY["width"])


def test_long_prompt_mode_openclip_shapes():
    encoder = FrozenOpenCLIPEmbedder(layer="penultimate", long_prompt_chunks=2, text_config=TINY)
    tokens = encoder.tokenize(["a cat"])
    assert tokens.shape == (1, 154) and tokens[0, 77:80].tolist() == [BOS, EOS, 0]
    assert encoder(["a cat"]).shape == (1, 154, TINY["width"])


@pytest.mark.parametrize("encoder_class", [FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder])
def test_trainable_encoder_gets_gradients(encoder_class):
    encoder = encoder_class(freeze=False, text_config=TINY)
    assert encoder.training and all(p.requires_grad for p in encoder.parameters())
    encoder.encode(["a photo of a cat", "a dog"]).square().mean().backward()
    unused = {"model.text_projection", "model.logit_scale"}  # stored for the checkpoint only
    for name, p in encoder.named_parameters():
        if name not in unused:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frozen_encoder_has_no_trainable_parameters():
    encoder = FrozenCLIPEmbedder(text_config=TINY)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())


def test_output_follows_module_dtype(sd1_pair):
    encoder = sd1_variant(sd1_pair).to(torch.float64)
    with torch.no_grad():
        z = encoder(["a photo of a cat"])
        assert z.dtype == torch.float64
        torch.testing.assert_close(z.float(), sd1_pair[0](["a photo of a cat"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "encoder_class, options",
    [
        (FrozenCLIPEmbedder, {"layer": "penultimate"}),
        (FrozenCLIPEmbedder, {"layer": "hidden"}),
        (FrozenCLIPEmbedder, {"layer": "hidden", "layer_idx": 4}),
        (FrozenCLIPEmbedder, {"layer": "pooled", "clip_skip": 2}),
        (FrozenCLIPEmbedder, {"clip_skip": 0}),
        (FrozenCLIPEmbedder, {"max_length": 78}),
        (FrozenCLIPEmbedder, {"long_prompt_chunks": 0}),
        (FrozenCLIPEmbedder, {"text_config": {**TINY, "hidden_size": 8}}),
        (FrozenCLIPEmbedder, {"text_config": {**TINY, "act": "relu"}}),
        (FrozenOpenCLIPEmbedder, {"arch": "ViT-bigG-14"}),
        (FrozenOpenCLIPEmbedder, {"layer": "pooled"}),
    ],
)
def test_bad_options_raise_value_error(encoder_class, options):
    with pytest.raises(ValueError):
        encoder_class(**{"text_config": TINY, **options})
