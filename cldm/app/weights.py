"""Which model files an app runs: the real ControlNet checkpoint, else the bundled tiny demo model.

Upstream's apps crash at import when `./models/control_sd15_<name>.pth` is absent. Ours start anyway:
they fall back to the tiny Fill50K demo model shipped in `models/` (when present) and say so in a banner,
so a fresh clone can be tried before downloading 5.7 GB per checkpoint.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
SD15_CONFIG = MODELS_DIR / "cldm_v15.yaml"
DEMO_CONFIG = MODELS_DIR / "tiny_fill50k.yaml"
DEMO_WEIGHTS = MODELS_DIR / "tiny_fill50k.safetensors"
WEIGHTS_URL = "https://huggingface.co/lllyasviel/ControlNet/tree/main/models"


def default_checkpoint(name: str) -> Path:
    """Upstream's location of the ControlNet 1.0 checkpoint for `name` (e.g. 'canny')."""
    return MODELS_DIR / f"control_sd15_{name}.pth"


@dataclass(frozen=True)
class ModelChoice:
    """The config and the checkpoint per ControlNet an app will load (none: nothing to run), and the banner
    explaining the choice."""
    config: Optional[Path]
    ckpts: Tuple[Path, ...]
    banner: str = ""  # plain text; empty when the requested checkpoints run
    demo: bool = False  # the bundled tiny demo model stands in for the real checkpoints

    @property
    def available(self) -> bool:
        return bool(self.ckpts)


def resolve_model(names, ckpts=None, config=None, demo_config=DEMO_CONFIG, demo_weights=DEMO_WEIGHTS) -> ModelChoice:
    """Pick what runs for the checkpoints `names` (several for multi-ControlNet apps, all-or-nothing).

    ckpts: explicit checkpoint paths (default: `default_checkpoint(name)` each). When every checkpoint exists,
    they run with `config` (default `models/cldm_v15.yaml`); otherwise the demo model stands in for all of
    them if its two files exist. The banner names the missing files and where to get them.
    """
    names = [names] if isinstance(names, str) else list(names)
    paths = [Path(p) for p in ckpts] if ckpts else [default_checkpoint(n) for n in names]
    missing = [p for p in paths if not p.is_file()]
    if not missing:
        return ModelChoice(Path(config or SD15_CONFIG), tuple(paths))
    wanted = "; ".join(f"{p.name} at {p}" for p in missing)
    where = f"download from {WEIGHTS_URL} and put {wanted}, then restart"
    if Path(demo_config).is_file() and Path(demo_weights).is_file():
        return ModelChoice(Path(demo_config), (Path(demo_weights),) * len(paths), demo=True, banner=(
            f"Running the bundled tiny demo model ({Path(demo_weights).name}, trained on Fill50K circles only: "
            f"expect coloured circles, not photos). For the real ControlNet, {where}."))
    return ModelChoice(None, (), banner=f"No model weights found, so Run cannot generate images: {where}.")
