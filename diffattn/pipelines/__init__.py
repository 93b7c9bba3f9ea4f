"""Pipelines shipped with diffattn. Submodules import diffusers lazily; importing this package is cheap."""
