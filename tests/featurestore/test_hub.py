"""The hub client goes offline for one load when its endpoint cannot be reached, and only for that load."""
from __future__ import annotations

import socket

from huggingface_hub import constants

from cellgap.featurestore.encoders.hub import hub_reachable, offline_unless_reachable


def test_a_listening_endpoint_is_reachable_and_a_closed_port_is_not():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert hub_reachable(f"http://127.0.0.1:{port}")
    assert not hub_reachable(f"http://127.0.0.1:{port}", timeout=1.0)


def test_offline_only_inside_the_block_when_unreachable(monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with offline_unless_reachable() as online:
        assert not online and constants.is_offline_mode()
    assert not constants.is_offline_mode()


def test_a_reachable_hub_is_left_online(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        with offline_unless_reachable() as online:
            assert online and not constants.is_offline_mode()
