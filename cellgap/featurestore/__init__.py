"""Frozen-encoder feature store: data set readers, encoders, the Zarr store and extraction.

Importing this package is cheap; heavy modules (torch, zarr) load where they are used.
"""
