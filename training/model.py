"""The training-time ControlLDM: cached encodings and FSDP sharding (see ``TrainControlLDM``)."""
import torch
from einops import rearrange

from cldm.cldm import ControlLDM
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

def load_bitsandbytes():
    """bitsandbytes, imported offline: at import it looks for optional kernels on the Hugging Face Hub, which
    this project never lets happen at run time."""
    import os
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import bitsandbytes
    except ImportError as e:
        raise SystemExit("error: --optimizer adamw8bit needs the bitsandbytes package "
                         "(pip install -c constraints.txt bitsandbytes)") from e
    return bitsandbytes


# Blocks sharded as FSDP units: each is gathered for its own forward/backward, then freed again.
SHARD_CLASS_NAMES = ("ResBlock", "SpatialTransformer")


class TrainControlLDM(ControlLDM):
    """ControlLDM as trained by ``training.train``: same weights and checkpoint keys, plus

    - ``get_input`` takes ``moments`` (cached VAE posterior) and ``context`` (cached text encoding) from the batch
      when present (``training.cache``);
    - ``configure_model`` shards the UNet and ControlNet blocks with FSDP2 (``fully_shard``) when Lightning's
      ModelParallelStrategy gives it a device mesh (``--strategy fsdp``)."""

    @torch.no_grad()
    def get_input(self, batch, k, bs=None):
        if "moments" not in batch and "context" not in batch:
            return super().get_input(batch, k, bs=bs)
        n = len(batch[self.cond_stage_key]) if bs is None else bs
        if "moments" in batch:
            posterior = DiagonalGaussianDistribution(batch["moments"][:n].to(self.device).float())
        else:
            x = rearrange(batch[k][:n], "b h w c -> b c h w").to(memory_format=torch.contiguous_format).float()
            x = x.to(self.device)  # as LatentDiffusion.get_input, so the encoder sees the same memory layout
            posterior = self.encode_first_stage(x)
        z = self.get_first_stage_encoding(posterior).detach()
        if "context" in batch:
            c = batch["context"][:n].to(self.device)
        else:
            c = self.get_learned_conditioning(list(batch[self.cond_stage_key])[:n])
        hint = batch[self.control_key][:n].to(self.device)
        hint = rearrange(hint, "b h w c -> b c h w").to(memory_format=torch.contiguous_format).float()
        return z, {"c_crossattn": [c], "c_concat": [hint]}

    optimizer_name = "adamw"  # set by training.train (--optimizer)

    def configure_optimizers(self):
        """AdamW as upstream, or bitsandbytes' 8-bit AdamW (its two moment buffers stored as uint8 blocks with a
        float scale each: about a quarter of AdamW's state memory)."""
        if self.optimizer_name != "adamw8bit":
            return super().configure_optimizers()
        return load_bitsandbytes().optim.AdamW8bit(self.trainable_parameters(), lr=self.learning_rate)

    def configure_model(self) -> None:
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or getattr(self, "_sharded", False):
            return
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard
        mesh = mesh["data_parallel"] if mesh.ndim > 1 else mesh
        # fsdp_cpu_offload: parameters, gradients and AdamW state live on the CPU between uses.
        offload = getattr(self, "fsdp_cpu_offload", False)
        policy = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if offload else OffloadPolicy()
        for net in (self.model.diffusion_model, self.control_model):
            for module in list(net.modules()):
                if type(module).__name__ in SHARD_CLASS_NAMES:
                    fully_shard(module, mesh=mesh, offload_policy=policy)
            fully_shard(net, mesh=mesh, offload_policy=policy)
        self._sharded = True
