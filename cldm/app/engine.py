"""The diffusion side of the apps: load a ControlLDM (plus extra ControlNets) once, sample per request.

Reproduces the sampling half of upstream's `process()` (prompt + ', ' + added prompt, negative prompt,
guess-mode scales, seed -1 = random in [0, 65535], samples decoded to uint8), but every per-request value
(strength, guess mode, start/end, the second ControlNet) travels as a sampler argument: the shared model
is never modified, so concurrent users cannot see each other's settings.
"""
import logging
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from cldm.app.weights import ModelChoice
from cldm.cldm import ControlNet, control_mode
from cldm.generate import LATENT_FACTOR, Control, generate
from cldm.loading import load_control_weights
from cldm.model import create_control_net, create_model
from ldm.accel import accelerate_for_inference, resolve_dtype

log = logging.getLogger(__name__)


class NoModelError(RuntimeError):
    """Run was pressed but no model weights were found at startup."""


@dataclass(frozen=True)
class Sampling:
    """One request's sampling settings (upstream's Advanced options, minus the per-ControlNet ones)."""
    prompt: str = ""
    added_prompt: str = "best quality, extremely detailed"
    negative_prompt: str = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
                            "cropped, worst quality, low quality")
    num_samples: int = 1
    ddim_steps: int = 20
    guess_mode: bool = False  # upstream's flag: control mode "ControlNet is more important" for every unit
    scale: float = 9.0
    seed: int = -1
    eta: float = 0.0

    def __post_init__(self):
        problems = [f"{name} = {value}" for name, value, ok in (
            ("Images", self.num_samples, self.num_samples >= 1),
            ("Steps", self.ddim_steps, self.ddim_steps >= 1),
            ("Guidance Scale", self.scale, math.isfinite(self.scale) and self.scale > 0),
            ("Seed", self.seed, self.seed >= -1),
            ("eta (0 to 1)", self.eta, math.isfinite(self.eta) and 0 <= self.eta <= 1),  # >1: NaN or noise
        ) if not ok]
        if problems:
            raise ValueError("invalid setting: " + ", ".join(problems))

    def full_prompt(self) -> str:
        """Upstream's `prompt + ', ' + added_prompt`, without a dangling comma when either is empty."""
        return ", ".join(p for p in (self.prompt, self.added_prompt) if p)


@dataclass
class ControlUnit:
    """One ControlNet's share of a request: the map it sees and how strongly and when it applies."""
    control_map: np.ndarray  # (H, W, 3) uint8; H and W multiples of 64
    strength: float = 1.0
    start: float = 0.0  # fractions of the sampling steps, 0 = first (noisiest) step
    end: float = 1.0
    net: Optional[ControlNet] = None  # None: the model's own control_model
    mode: str = "balanced"  # a key or label of cldm.cldm.CONTROL_MODES

    def __post_init__(self):
        self.mode = control_mode(self.mode)
        if not (math.isfinite(self.strength) and self.strength >= 0):
            raise ValueError(f"Control Strength must be a number >= 0, got {self.strength}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"Control start must not exceed Control end (got {self.start} and {self.end})")


def load_control_net(config_path, ckpt_path) -> ControlNet:
    """The ControlNet of any ControlNet file: a full checkpoint, a control-only file or a diffusers folder."""
    net = create_control_net(str(config_path))
    load_control_weights(net, ckpt_path)
    return net.eval()


class Engine:
    """A loaded ControlLDM and the extra ControlNets of a multi-ControlNet app, on one device.

    `model=None` stands for "no weights found": the app still starts, and `generate` raises NoModelError
    with `banner` (which says where the weights go). save_memory: upstream's low-VRAM mode, keeping on the
    device only the modules the current phase needs.
    """

    def __init__(self, model=None, device="cpu", extra_nets: Sequence[ControlNet] = (), save_memory: bool = False,
                 banner: str = "", demo: bool = False):
        self.model = model
        self.device = torch.device(device)
        self.extra_nets = list(extra_nets)
        self.save_memory = save_memory
        self.banner = banner
        self.model_label = ""  # the files in use, shown in the app's header
        self.demo = demo  # the bundled demo model stands in for the real checkpoint
        # The demo model's tiny text tower only learnt Fill50K prompts: upstream's added and negative prompts
        # ("best quality, ...") are noise to it, so its apps start with them empty, and at the guidance
        # scale that scored best on it (models/tiny_fill50k.md: 2; upstream's 9 is clearly worse there).
        self.default_sampling = Sampling(added_prompt="", negative_prompt="", scale=2.0) if demo else Sampling()

    @classmethod
    def load(cls, choice: ModelChoice, device="cpu", dtype="auto", save_memory: bool = False) -> "Engine":
        """Build and load what `choice` names: the first checkpoint is the model, the others add ControlNets.
        `dtype`: a torch dtype or a name ("auto" picks bf16 on CPUs with AMX and on GPUs, see ldm.accel)."""
        dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
        if not choice.available:
            log.warning("no model weights: %s", choice.banner)
            return cls(None, device, banner=choice.banner)
        model = create_model(str(choice.config)).eval()
        choice.load_weights(model)  # the first ControlNet, on its base when it is a control-only file
        extra = [load_control_net(choice.config_of(i), path).to(device, dtype)
                 for i, path in enumerate(choice.ckpts[1:], start=1)]
        engine = cls(model.to(device, dtype), device, extra, save_memory, choice.banner, choice.demo)
        engine.model_label = choice.describe()
        for module in (model, *extra):
            accelerate_for_inference(module)
        engine._shift(diffusing=False)
        return engine

    def ensure_model(self) -> None:
        """Raise NoModelError (with the banner saying where the weights go) when none was loaded."""
        if self.model is None:
            raise NoModelError(self.banner)

    @property
    def native_resolution(self) -> Optional[int]:
        """Image side the model was trained at (512 for SD 1.5), None without a model."""
        return None if self.model is None else self.model.image_size * LATENT_FACTOR

    def _shift(self, diffusing: bool) -> None:
        """Low-VRAM mode: the UNet and ControlNets on the device while diffusing, the VAE and text encoder otherwise."""
        if not self.save_memory:
            return
        self.model.low_vram_shift(diffusing, self.device)
        for net in self.extra_nets:
            net.to(self.device if diffusing else "cpu")

    @torch.no_grad()
    def generate(self, units: Sequence[ControlUnit], sampling: Sampling,
                 on_step: Optional[Callable[[int, int], None]] = None, **image_args) -> Tuple[List[np.ndarray], int]:
        """Sample `sampling.num_samples` images under every unit's map -> (list of (H, W, 3) uint8, seed used).

        All maps must share one size, a multiple of 64. `on_step(i, total)` is called after each DDIM step.
        The sampling itself is `cldm.generate.generate`, the Python API's function; `image_args` go to it
        (img2img and inpainting: init_image, strength, mask, mask_blur)."""
        self.ensure_model()
        h, w = units[0].control_map.shape[:2]
        if any(u.control_map.shape != (h, w, 3) for u in units) or h % 64 or w % 64:
            raise ValueError(f"control maps must be (H, W, 3) with H, W multiples of 64, got "
                             f"{[u.control_map.shape for u in units]}")
        self._shift(diffusing=False)
        images = generate([Control(u.control_map, u.strength, u.start, u.end, u.mode, u.net) for u in units],
                          sampling.full_prompt(), self.model, negative_prompt=sampling.negative_prompt,
                          steps=sampling.ddim_steps, sampler="ddim", seed=sampling.seed, width=w, height=h,
                          guidance_scale=sampling.scale, num_images=sampling.num_samples,
                          guess_mode=sampling.guess_mode, eta=sampling.eta, progress_bar=False,
                          on_phase=self._shift, **image_args,
                          callback=None if on_step is None else lambda info: on_step(info["i"] + 1, info["total"]))
        return [np.asarray(image) for image in images], images[0].info["seed"]  # -1 resolved by generate
