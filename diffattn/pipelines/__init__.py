"""Pipelines built on diffattn: high-resolution image and video generation (RAU-Net, two-stage refine)."""
