"""Which model files an app runs: the real ControlNet (with its base), else the bundled tiny demo model.

Upstream's apps crash at import when `./models/control_sd15_<name>.pth` is absent. Ours start anyway:
they fall back to the tiny Fill50K demo model shipped in `models/` (when present) and say so in a banner,
so a fresh clone can be tried before downloading 5.7 GB per checkpoint.
"""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
SD15_CONFIG = MODELS_DIR / "cldm_v15.yaml"
DEMO_CONFIG = MODELS_DIR / "tiny_fill50k.yaml"
DEMO_WEIGHTS = MODELS_DIR / "tiny_fill50k.safetensors"
WEIGHTS_URL = "https://huggingface.co/lllyasviel/ControlNet/tree/main/models"
V11_WEIGHTS_URL = "https://huggingface.co/lllyasviel/ControlNet-v1-1/tree/main"
V11_PREFIX = "control_v11"  # an app name starting so is a 1.1 file's own stem, e.g. control_v11p_sd15_canny


def default_checkpoint(name: str) -> Path:
    """Upstream's location of the checkpoint for `name`: a 1.0 app name (e.g. 'canny' ->
    control_sd15_canny.pth) or a 1.1 file stem (control_v11p_sd15_canny -> control_v11p_sd15_canny.pth)."""
    return MODELS_DIR / (f"{name}.pth" if name.startswith(V11_PREFIX) else f"control_sd15_{name}.pth")


CONTROL_ONLY_KINDS = ("control", "bare-control", "diffusers-control")
# Base checkpoints looked for in the models folder when a control-only file comes without --base, best first.
SD15_BASES = ("v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly.ckpt", "v1-5-pruned.safetensors",
              "v1-5-pruned.ckpt")
SD21_BASES = ("v2-1_512-ema-pruned.safetensors", "v2-1_512-ema-pruned.ckpt")
ANIME_BASES = ("anything-v3-full.safetensors",)  # upstream's base for lineart_anime (sd15s2)
# ControlNet 1.1 counterparts of the 1.0 checkpoint names, for the models folder scan.
V11_NAMES = {"hed": "softedge", "normal": "normalbae", "pose": "openpose"}
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".ckpt", ".bin")


@dataclass(frozen=True)
class ModelChoice:
    """The config and the checkpoint per ControlNet an app will load (none: nothing to run), and the banner
    explaining the choice. ``base``: the Stable Diffusion checkpoint under the first ControlNet when that one is
    a control-only file (1.1's ``control_v11*``, a diffusers folder); None when it is a full checkpoint."""
    config: Optional[Path]
    ckpts: Tuple[Path, ...]
    banner: str = ""  # plain text; empty when the requested checkpoints run
    demo: bool = False  # the bundled tiny demo model stands in for the real checkpoints
    base: Optional[Path] = None
    control_configs: Tuple[Path, ...] = ()  # per ControlNet (its own yaml, e.g. shuffle's); default: config
    reason: str = ""  # why the requested files cannot run, and what to do (empty when they run)

    def config_of(self, index: int) -> Optional[Path]:
        """The yaml the ControlNet ``ckpts[index]`` is built from."""
        return self.control_configs[index] if self.control_configs else self.config

    @property
    def available(self) -> bool:
        return bool(self.ckpts)

    def describe(self) -> str:
        """One line naming the files in use, for the app's header."""
        if not self.ckpts:
            return "no model"
        nets = " + ".join(p.name for p in self.ckpts)
        on = f" on {self.base.name}" if self.base else ""
        return f"{nets}{on} ({self.config.name if self.config else 'no config'})"

    def load_weights(self, model) -> None:
        """Fill a model built from ``config`` with the first ControlNet (and ``base``), strictly."""
        from cldm.loading import load_model_weights
        load_model_weights(model, self.ckpts[0], base=self.base)


def config_for(control: Path, models_dir: Path = MODELS_DIR) -> Path:
    """The model yaml for a ControlNet file: a yaml of the same name beside it (upstream 1.1 ships one per
    model), else the config a diffusers folder's config.json matches, else one of ``models_dir`` by the file's
    name (``control_v11p_sd15_canny_fp16.safetensors`` -> ``control_v11p_sd15_canny.yaml``; ``sd21`` ->
    ``cldm_v21.yaml``), else ``cldm_v15.yaml``."""
    control, models_dir = Path(control), Path(models_dir)
    if control.is_dir():
        from cldm.formats.diffusers import matching_yaml, read_config
        config = read_config(control)
        found = matching_yaml(config, models_dir) if config else None
        if found:
            return found
    stem = re.sub(r"[._-]fp16$", "", control.stem)
    for candidate in (control.with_suffix(".yaml"), control.parent / f"{stem}.yaml", models_dir / f"{stem}.yaml"):
        if candidate.is_file() and candidate.resolve() != control.resolve():
            return candidate
    name = control.name.lower()
    for key, config in (("sd21", "cldm_v21.yaml"), ("v21", "cldm_v21.yaml"), ("shuffle", "control_v11e_sd15_shuffle.yaml"),
                        ("sd15s2", "control_v11p_sd15s2_lineart_anime.yaml")):
        if key in name and (models_dir / config).is_file():
            return models_dir / config
    return models_dir / SD15_CONFIG.name if (models_dir / SD15_CONFIG.name).is_file() else SD15_CONFIG


def is_control_only(path: Path) -> bool:
    """True for a ControlNet without Stable Diffusion (it needs a base); False for a full checkpoint, and for
    anything unreadable (loading it then reports the problem with the file's name)."""
    from cldm.loading import file_kind
    try:
        return file_kind(path) in CONTROL_ONLY_KINDS
    except Exception:  # noqa: BLE001 - left to load_model_weights, which names the file and the problem
        return False


def base_names(config: Path, control: Path) -> Tuple[str, ...]:
    """File names of the base checkpoints that fit ``config`` (and ``control``), best first."""
    text = Path(config).read_text() if Path(config).is_file() else ""
    names = SD21_BASES if "FrozenOpenCLIPEmbedder" in text else SD15_BASES
    return ANIME_BASES + names if "sd15s2" in Path(control).name else names


def default_base(config: Path, control: Path, models_dir: Path = MODELS_DIR) -> Optional[Path]:
    """A base checkpoint of the config's family found in ``models_dir`` (None when there is none)."""
    return next((Path(models_dir) / n for n in base_names(config, control) if (Path(models_dir) / n).is_file()), None)


def scan_controls(name: str, models_dir: Path = MODELS_DIR) -> Optional[Path]:
    """The models folder's ControlNet for the app ``name``: upstream 1.0's ``control_sd15_<name>.pth`` first, else
    a 1.1 file or diffusers folder ``control_v11*_sd15*_<name>[_fp16]`` (``hed`` -> ``softedge``, ...)."""
    models_dir = Path(models_dir)
    if name.startswith(V11_PREFIX):  # a 1.1 app: that very file (fp32 or fp16, any format), never a 1.0 one
        wanted = re.compile(rf"{re.escape(name)}([._-]fp16)?$")
    else:
        first = models_dir / f"control_sd15_{name}.pth"
        if first.is_file():
            return first
        wanted = re.compile(rf"control_v11\w*_sd(15|15s2|21)_{re.escape(V11_NAMES.get(name, name))}([._-]fp16)?$")
    if not models_dir.is_dir():
        return None
    found = sorted(p for p in models_dir.iterdir() if wanted.match(p.stem if p.is_file() else p.name) and (
        (p.is_file() and p.suffix in WEIGHT_SUFFIXES) or (p.is_dir() and (p / "config.json").is_file())))
    found.sort(key=lambda p: ("fp16" in p.name, p.suffix != ".safetensors"))  # fp32 first, then safetensors first
    return found[0] if found else None


def resolve_model(names, ckpts=None, config=None, demo_config=DEMO_CONFIG, demo_weights=DEMO_WEIGHTS, base=None,
                  models_dir=None) -> ModelChoice:
    """Pick what runs for the checkpoints `names` (several for multi-ControlNet apps, all-or-nothing).

    ckpts: explicit ControlNet paths (full checkpoints, control-only files or diffusers folders); default: the
    models folder's (`scan_controls`, upstream's `control_sd15_<name>.pth` first). config: default
    `config_for(first ControlNet)`. base: the Stable Diffusion checkpoint for a control-only first ControlNet
    (default: one found in the models folder). When every file exists they run; otherwise the demo model stands
    in for all of them if its two files exist. The banner names the missing files and where to get them.
    """
    names = [names] if isinstance(names, str) else list(names)
    folder = Path(models_dir) if models_dir else MODELS_DIR
    if ckpts:
        paths = [Path(p) for p in ckpts]
    else:
        paths = [scan_controls(n, folder) or folder / default_checkpoint(n).name for n in names]
    missing = [p for p in paths if not p.exists()]
    chosen_config = Path(config) if config else (config_for(paths[0], folder) if not missing else SD15_CONFIG)
    base = Path(base) if base else None
    if not missing and base is None and is_control_only(paths[0]):
        base = default_base(chosen_config, paths[0], folder)
        if base is None:
            wanted = (f"{paths[0].name} holds only a ControlNet: name its Stable Diffusion base with --base, or put "
                      f"one of {', '.join(base_names(chosen_config, paths[0]))} into {folder}")
            return _fallback(paths, [], demo_config, demo_weights, wanted)
    if base is not None and not base.is_file():
        missing.append(base)
    if not missing:
        configs = tuple(Path(config) if config else config_for(p, folder) for p in paths)
        return ModelChoice(chosen_config, tuple(paths), base=base, control_configs=(chosen_config,) + configs[1:])
    return _fallback(paths, missing, demo_config, demo_weights)


def _fallback(paths, missing, demo_config, demo_weights, wanted: str = "") -> ModelChoice:
    url = V11_WEIGHTS_URL if any(p.name.startswith(V11_PREFIX) for p in paths) else WEIGHTS_URL
    wanted = wanted or "download from {} and put {}, then restart".format(
        url, "; ".join(f"{p.name} at {p}" for p in missing))
    if Path(demo_config).is_file() and Path(demo_weights).is_file():
        return ModelChoice(Path(demo_config), (Path(demo_weights),) * len(paths), demo=True, reason=wanted, banner=(
            f"Running the bundled tiny demo model ({Path(demo_weights).name}, trained on Fill50K circles only: "
            f"expect coloured circles, not photos). For the real ControlNet, {wanted}."))
    return ModelChoice(None, (), reason=wanted,
                       banner=f"No model weights found, so Run cannot generate images: {wanted}.")
