"""REST service over a trained run: per-tile predictions and metrics."""
