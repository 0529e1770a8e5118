"""EMA of the UNet weights (upstream's LitEma semantics)."""
import torch
from torch import nn

from ldm.modules.ema import LitEma


def test_ema_warmup_decay_and_swap():
    net = nn.Linear(2, 1)
    ema = LitEma(net, decay=0.9999)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema(net)  # first update: decay = min(0.9999, (1 + 1) / (10 + 1)) = 2/11
    shadow = dict(ema.named_buffers())["weight"]
    assert torch.allclose(shadow, start + (1 - 2 / 11) * 1.0)
    assert int(ema.num_updates) == 1
    trained = net.weight.detach().clone()
    with ema.average_parameters(net):
        assert torch.allclose(net.weight, shadow)
    assert torch.equal(net.weight, trained)  # restored afterwards
