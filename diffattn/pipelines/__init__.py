"""Pipelines shipped with diffattn: the embedded tiny model (`tiny_model`) and high-resolution image and
video generation (`raunet`, `highres`: RAU-Net, two-stage refine). Submodules import diffusers lazily."""
