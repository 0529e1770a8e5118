"""Other layouts of the same weights: diffusers' ``ControlNetModel`` (``cldm.formats.diffusers``)."""
