"""The built-in plugin ``rlgen-diffusion``: registers the hand-written U-Net and DDPM scheduler (plus diffusers' fast
samplers) and adds the ``rlgen diffusion`` command (``commands``)."""
