"""The detectors an app uses, built on first use so an app loads only the weights it needs.

A missing weight file therefore surfaces on Run (as `annotator.util.MissingWeightsError`, naming the
file, the folder it is looked up in and its URL), not at startup.
"""
from functools import cached_property

from annotator.canny import CannyDetector
from annotator.hed import HEDdetector
from annotator.lineart import LineartDetector
from annotator.lineart_anime import LineartAnimeDetector
from annotator.midas import MidasDetector
from annotator.mlsd import MLSDdetector
from annotator.normalbae import NormalBaeDetector
from annotator.openpose import OpenposeDetector
from annotator.openpose.full import OpenposeFullDetector
from annotator.pidinet import PidiNetDetector
from annotator.uniformer import UniformerDetector


class Annotators:
    """Lazily built detectors on `device`, reading weights from `ckpt_dir` (default: the annotator package's).

    The nets run in float32 whatever the diffusion model's dtype, as upstream's did.
    """

    def __init__(self, device="cpu", ckpt_dir=None):
        self.device = device
        self.ckpt_dir = ckpt_dir

    @cached_property
    def canny(self) -> CannyDetector:
        return CannyDetector()

    @cached_property
    def hed(self) -> HEDdetector:
        return HEDdetector(device=self.device, ckpt_dir=self.ckpt_dir)

    @cached_property
    def mlsd(self) -> MLSDdetector:
        return MLSDdetector(device=self.device, ckpt_dir=self.ckpt_dir)

    @cached_property
    def midas(self) -> MidasDetector:
        return MidasDetector(device=self.device, ckpt_dir=self.ckpt_dir)

    @cached_property
    def openpose(self) -> OpenposeDetector:
        return OpenposeDetector(device=self.device, ckpt_dir=self.ckpt_dir)

    @cached_property
    def uniformer(self) -> UniformerDetector:
        return UniformerDetector(device=self.device, ckpt_dir=self.ckpt_dir)

    # ControlNet 1.1

    @cached_property
    def pidinet(self) -> PidiNetDetector:
        return PidiNetDetector(device=self.device, ckpt_dir=self.ckpt_dir)

    @cached_property
    def lineart(self) -> LineartDetector:
        return LineartDetector(device=self.device, ckpt_dir=self.ckpt_dir)

    @cached_property
    def lineart_anime(self) -> LineartAnimeDetector:
        return LineartAnimeDetector(device=self.device, ckpt_dir=self.ckpt_dir)

    @cached_property
    def openpose_full(self) -> OpenposeFullDetector:
        """1.1's OpenPose (hands and faces drawn as 1.1 draws them); it has its own body/hand nets."""
        return OpenposeFullDetector(device=self.device, ckpt_dir=self.ckpt_dir)

    @cached_property
    def normalbae(self) -> NormalBaeDetector:
        return NormalBaeDetector(device=self.device, ckpt_dir=self.ckpt_dir)
