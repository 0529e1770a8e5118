"""OpenPose body (COCO-18, Cao et al. 2017), hand (Simon et al. 2017) and face CPM networks.

Convolutions are registered under their Caffe layer names at the top level, which are exactly the keys of
`body_pose_model.pth` / `hand_pose_model.pth` / `facenet.pth`, so the files load strictly and unchanged.
"""
import torch
import torch.nn.functional as F
from torch import nn

POOL = None  # a 2x2/2 max-pool in a layer list; other entries are (name, in, out, kernel) 'same' convs

VGG_FRONT = (("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), POOL,
             ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3), POOL,
             ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3),
             POOL, ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3))

PAF_CHANNELS = 38  # 19 limbs x (dx, dy)
BODY_HEAT_CHANNELS = 19  # 18 COCO parts + background
HAND_HEAT_CHANNELS = 22  # 21 hand keypoints + background
FACE_HEAT_CHANNELS = 71  # 70 face landmarks + background
N_STAGES = 6


class CaffeConvNet(nn.Module):
    """Holds convs by Caffe name and runs layer lists: ReLU after every conv but a branch's last."""

    def add_layers(self, layers):
        for layer in layers:
            if layer is not POOL:
                name, cin, cout, k = layer
                self.add_module(name, nn.Conv2d(cin, cout, k, padding=k // 2))
        return layers

    def run(self, x, layers, relu_last=False):
        for i, layer in enumerate(layers):
            if layer is POOL:
                x = F.max_pool2d(x, 2, 2)
                continue
            x = getattr(self, layer[0])(x)
            if relu_last or i < len(layers) - 1:
                x = F.relu(x, inplace=True)
        return x


def _refinement_stage(suffix, in_channels, out_channels):
    """Stages 2-6: five 7x7 convs, a 1x1, and the 1x1 output conv."""
    return ((f"Mconv1_{suffix}", in_channels, 128, 7), *((f"Mconv{i}_{suffix}", 128, 128, 7) for i in range(2, 6)),
            (f"Mconv6_{suffix}", 128, 128, 1), (f"Mconv7_{suffix}", 128, out_channels, 1))


class BodyPoseNet(CaffeConvNet):
    """(b, 3, H, W) BGR / 256 - 0.5 -> PAFs (b, 38, H/8, W/8) and heat maps (b, 19, H/8, W/8).

    Each stage has two branches: L1 (part affinity fields) and L2 (heat maps).
    """

    def __init__(self):
        super().__init__()
        self.trunk = self.add_layers(VGG_FRONT + (("conv4_3_CPM", 512, 256, 3), ("conv4_4_CPM", 256, 128, 3)))
        self.branches = []
        for branch, out in ((1, PAF_CHANNELS), (2, BODY_HEAT_CHANNELS)):
            first = ((f"conv5_1_CPM_L{branch}", 128, 128, 3), (f"conv5_2_CPM_L{branch}", 128, 128, 3),
                     (f"conv5_3_CPM_L{branch}", 128, 128, 3), (f"conv5_4_CPM_L{branch}", 128, 512, 1),
                     (f"conv5_5_CPM_L{branch}", 512, out, 1))
            later = [_refinement_stage(f"stage{s}_L{branch}", 128 + PAF_CHANNELS + BODY_HEAT_CHANNELS, out)
                     for s in range(2, N_STAGES + 1)]
            self.branches.append([self.add_layers(stage) for stage in [first] + later])

    def forward(self, x):
        features = self.run(x, self.trunk, relu_last=True)
        h = features
        for stage, (paf_layers, heat_layers) in enumerate(zip(*self.branches), start=1):
            paf = self.run(h, paf_layers)
            # Upstream's no-ReLU list names Mconv7_stage6_L1 twice and misses ..._L2: the final heat maps
            # are rectified, and the released results depend on it.
            heat = self.run(h, heat_layers, relu_last=stage == N_STAGES)
            h = torch.cat([paf, heat, features], dim=1)
        return paf, heat


class HandPoseNet(CaffeConvNet):
    """(b, 3, H, W) BGR / 256 - 0.5 -> keypoint heat maps (b, 22, H/8, W/8)."""

    def __init__(self, heat_channels: int = HAND_HEAT_CHANNELS):
        super().__init__()
        self.trunk = self.add_layers(VGG_FRONT + (
            ("conv4_3", 512, 512, 3), ("conv4_4", 512, 512, 3), ("conv5_1", 512, 512, 3), ("conv5_2", 512, 512, 3),
            ("conv5_3_CPM", 512, 128, 3)))
        first = (("conv6_1_CPM", 128, 512, 1), ("conv6_2_CPM", 512, heat_channels, 1))
        later = [_refinement_stage(f"stage{s}", 128 + heat_channels, heat_channels) for s in range(2, N_STAGES + 1)]
        self.stages = [self.add_layers(stage) for stage in [first] + later]

    def forward(self, x):
        features = self.run(x, self.trunk, relu_last=True)
        out = self.run(features, self.stages[0])
        for layers in self.stages[1:]:
            out = self.run(torch.cat([out, features], dim=1), layers)
        return out


class FaceNet(HandPoseNet):
    """The OpenPose face net (ControlNet 1.1's `facenet.pth`): the hand net's layers and layer names, with
    71 heat maps (70 landmarks + background). (b, 3, H, W) BGR / 256 - 0.5 -> (b, 71, H/8, W/8)."""

    def __init__(self):
        super().__init__(FACE_HEAT_CHANNELS)
