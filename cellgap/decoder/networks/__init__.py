"""The decoder network, one code path sized from the store's manifest."""
from __future__ import annotations

from cellgap.decoder.networks.model import CellDecoder, channels_last, count_parameters, flops_per_tile, on_device
from cellgap.decoder.networks.spec import DecoderConfig, NetworkSpec, network_spec

__all__ = ["CellDecoder", "DecoderConfig", "NetworkSpec", "channels_last", "count_parameters", "flops_per_tile",
           "network_spec", "on_device"]
