"""`cellgap bench gpu`: the GPU path's ratios (extraction against its limits, post-processing against the decoder)."""
