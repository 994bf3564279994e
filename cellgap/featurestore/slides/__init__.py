"""Whole-slide images: reading at a model's resolution, finding the tissue, and the grid of regions to visit."""
