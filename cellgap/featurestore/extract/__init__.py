"""Extraction: run a frozen encoder over a data set and fill a store, resumably, locally or on dask."""
