"""Tests of histostain.segmentation (HoVer-Net network, weights loading, targets, losses, training)."""
