"""``--strategy`` values beyond Lightning's plain strings.

``fsdp`` is FSDP2 (``torch.distributed.fsdp.fully_shard``) through Lightning's ModelParallelStrategy: every rank
holds a shard of each UNet/ControlNet block's weights, gradients and AdamW state and gathers a block only while it
runs (``TrainControlLDM.configure_model``). Unlike Lightning's ``'fsdp'`` string (FSDP1, GPU only) it also runs on
CPU processes with gloo, which is how tests/test_scale.py checks it. Checkpoints are gathered into one ordinary
file by rank 0. DeepSpeed strategies need the deepspeed package.
"""
import importlib.util
from typing import Union

from pytorch_lightning.strategies import ModelParallelStrategy, Strategy


def make_strategy(name: str, world_size: int = 1) -> Union[str, Strategy]:
    """``world_size``: processes in all (devices x nodes); FSDP shards over all of them."""
    if name in ("fsdp", "fsdp_cpu_offload"):  # the offload is set on the model (TrainControlLDM.configure_model)
        return ModelParallelStrategy(data_parallel_size=world_size, tensor_parallel_size=1,
                                     save_distributed_checkpoint=False)
    if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise SystemExit(f"error: --strategy {name} needs the deepspeed package, which is not installed here "
                         "(see docs/training.md)")
    return name


def uses_own_checkpoint_io(strategy: Union[str, Strategy]) -> bool:
    """Strategies whose checkpoints are not one torch file written through the checkpoint IO plugin."""
    return isinstance(strategy, str) and strategy.startswith("deepspeed")
