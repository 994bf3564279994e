"""Decoder: CISCA targets, a multi-scale decoder trained from the feature store, post-processing,
prediction and the metrics that score it. Imports only `featurestore` below it."""
