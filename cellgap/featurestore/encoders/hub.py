"""Pretrained weights from the Hugging Face hub without a minute of retries on a machine that has no
route to it (hospital networks, clusters): one short connection test decides, then the hub client
runs offline and answers from its local cache at once, or fails with the cache's own error."""
from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0


def hub_reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the endpoint's host opens within `timeout` seconds."""
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_unless_reachable() -> Iterator[bool]:
    """Run the block with the hub client offline when its endpoint cannot be reached; yields whether it is."""
    try:
        from huggingface_hub import constants
    except ImportError:  # timm without the hub client downloads nothing from the hub
        yield True
        return
    if constants.HF_HUB_OFFLINE:
        yield False
        return
    if hub_reachable(constants.ENDPOINT):
        yield True
        return
    log.debug("%s cannot be reached: pretrained weights come from the local cache only", constants.ENDPOINT)
    constants.HF_HUB_OFFLINE = True
    try:
        yield False
    finally:
        constants.HF_HUB_OFFLINE = False
