import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests run tiny models: intra-op threads gain nothing there, and on a busy 2-core machine OpenMP's
# spinning threads made tiny calls up to 10x slower (measured: 0.2 s vs 1.5-11 s per app call).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MANIFESTS = ROOT / "tests" / "manifests"  # key -> shape of the released checkpoints (README.md there)
TINY_CLDM = str(ROOT / "tests" / "configs" / "cldm_tiny.yaml")
TINY_LDM = str(ROOT / "tests" / "configs" / "ldm_tiny.yaml")


def manifest(name: str) -> dict:
    """The layout of a released checkpoint, e.g. ``manifest("cldm_v15")`` (``tests/manifests/<name>.json``)."""
    import json
    return json.loads((MANIFESTS / f"{name}.json").read_text())


def build_tiny(config: str = TINY_CLDM, seed: int = 0, **overrides):
    """A tiny model of the real classes with random (seeded) weights, in eval mode."""
    from cldm.model import create_model

    torch.manual_seed(seed)
    return create_model(config, **overrides).eval()


def randomize_zero_convs(model, seed: int = 1, std: float = 0.05):
    """Give every all-zero parameter of ``model`` random values: on a ControlLDM the zero convs (so the
    control has an effect) and the UNet's zero-initialised layers (as in a pretrained UNet)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture
def tiny_cldm():
    return build_tiny()


@pytest.fixture(scope="session")
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip("../shared (manifests, test images) is not beside the project")
    return SHARED


def training_workspace(root: Path, count: int = 8, pretrained: bool = False) -> Path:
    """A training folder under ``root``: ``count`` Fill50K images of 64 px in ``fill50k/`` and ``control_ini.ckpt``,
    made by tool_add_control from a tiny random SD (``pretrained``: its zero-initialised layers randomised, as in a
    trained UNet, so the loss depends on the latents and the context)."""
    from cldm.model import save_state_dict
    from training import fill50k
    from training.control_weights import add_control_cli

    fill50k.generate(str(root / "fill50k"), count=count, size=64, seed=0, workers=1)
    sd = build_tiny(TINY_LDM)
    save_state_dict((randomize_zero_convs(sd) if pretrained else sd).state_dict(), str(root / "sd.ckpt"))
    add_control_cli("", "", TINY_CLDM, [str(root / "sd.ckpt"), str(root / "control_ini.ckpt")])
    return root


DEMO_CONFIG = ROOT / "models" / "tiny_fill50k.yaml"
DEMO_WEIGHTS = ROOT / "models" / "tiny_fill50k.safetensors"


@pytest.fixture(scope="session")
def demo_model():
    """The bundled tiny Fill50K model as ``training.eval_fill`` loads it for inference (float32), shared by the
    tests that sample it; skips where the weights are absent (``python -m training.tiny_recipe`` makes them)."""
    if not DEMO_WEIGHTS.is_file():
        pytest.skip(f"{DEMO_WEIGHTS.name} absent (run training.tiny_recipe)")
    from training.eval_fill import load_model

    return load_model(str(DEMO_CONFIG), str(DEMO_WEIGHTS))
