"""Image-to-image stain translation: CycleGAN networks, checkpoint compatibility, tiled inference.

Submodules are imported explicitly (``histostain.translation.cyclegan``, ``.compat``, ``.translate``) so that
importing this package stays cheap and never pulls in torch.
"""
