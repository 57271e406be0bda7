"""Headless segmentation core: numpy + torch only, never Qt or napari."""
