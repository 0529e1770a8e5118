"""The configs in models/ build exactly the layouts of the released checkpoints (tests/manifests)."""
import pytest
import torch
from conftest import ROOT, manifest

from cldm.model import CheckpointError, create_model, load_checkpoint


def meta_state_dict(shapes):
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


@pytest.fixture(scope="module")
def meta_models():
    return {name: create_model(f"models/{name}.yaml", device="meta") for name in ("cldm_v15", "cldm_v21")}


@pytest.mark.parametrize("name", ["cldm_v15", "cldm_v21"])
def test_config_matches_manifest_exactly(meta_models, name):
    ours = {k: list(v.shape) for k, v in meta_models[name].state_dict().items()}
    assert ours == manifest(name)


@pytest.mark.parametrize("position_ids", [True, False])
@pytest.mark.parametrize("logvar", [True, False])
def test_sd15_file_loads_with_only_control_missing(meta_models, position_ids, logvar):
    shapes = manifest("sd15_ldm") | manifest("sd15_ldm_ema_extra")
    if not position_ids:
        shapes.pop("cond_stage_model.transformer.text_model.embeddings.position_ids")
    if not logvar:
        shapes.pop("logvar")
    report = load_checkpoint(meta_models["cldm_v15"], meta_state_dict(shapes), allow_missing=("control_model.",))
    assert report.missing and all(k.startswith("control_model.") for k in report.missing)
    assert len(report.missing) == 340
    assert not report.unexpected
    assert len(report.tolerated["EMA weights in the file, unused"]) == 688


def test_community_file_without_schedule_buffers_loads(meta_models):
    shapes = {k: v for k, v in manifest("cldm_v15").items() if "." in k}  # top-level buffers dropped
    report = load_checkpoint(meta_models["cldm_v15"], meta_state_dict(shapes))
    assert len(report.tolerated["schedule buffers absent from the file, kept from the config"]) == 13


def test_sd2_file_into_v15_is_refused_with_keys(meta_models):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(meta_models["cldm_v15"], meta_state_dict(manifest("cldm_v21")), source="v21.ckpt")
    msg = str(err.value)
    assert "v21.ckpt" in msg and "Stable Diffusion 2.x" in msg
    assert "other shapes" in msg and "attn2.to_k.weight" in msg
    assert "missing from the file" in msg and "unexpected keys" in msg


def test_lora_is_refused(meta_models):
    lora = {f"lora_unet_down_blocks_0_attentions_0_proj_in.lora_{ud}.weight": torch.empty(4, 320, device="meta")
            for ud in ("up", "down")}
    with pytest.raises(CheckpointError, match="LoRA"):
        load_checkpoint(meta_models["cldm_v15"], lora, source="style.safetensors")


def test_ema_keys_match_upstream_layout():
    """use_ema=True adds exactly the model_ema.* keys of v1-5-pruned.ckpt (dots removed from the names)."""
    model = create_model("models/cldm_v15.yaml", device="meta", use_ema=True)
    ema = {k: list(v.shape) for k, v in model.state_dict().items() if k.startswith("model_ema.")}
    assert ema == manifest("sd15_ldm_ema_extra")


def test_manifests_are_in_the_repository():
    """A fresh clone runs the layout tests (they used to need ../shared beside it, and skipped or failed)."""
    from conftest import MANIFESTS
    from tests.annotator_weights import MANIFEST_DIR
    assert MANIFESTS.is_relative_to(ROOT) and MANIFEST_DIR.is_relative_to(ROOT)
    names = {p.name for p in MANIFESTS.glob("*.json")} | {p.name for p in MANIFEST_DIR.glob("*.json")}
    assert {"cldm_v15.json", "cldm_v21.json", "sd15_ldm.json", "sd15_ldm_ema_extra.json", "sd21_ldm.json",
            "index.json", "body_pose_model.pth.json"} <= names
    assert sum(p.stat().st_size for p in MANIFESTS.rglob("*")) < 1_000_000  # small text, not weights
