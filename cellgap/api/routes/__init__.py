"""One router per resource: health, metrics, models, predict, evaluate."""
