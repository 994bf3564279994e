"""Training a decoder from a feature store: config, loop, validation, checkpoints and curves."""
