"""``SLUICE_OPERATOR_ADDRESS_MAP``: a test bed's map from pod addresses to loopback, and nothing without it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sluice_operator._core import probes


def test_without_the_variable_the_pod_address_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(probes.ADDRESS_MAP_ENV, raising=False)
    assert probes.address("10.244.0.7", 8080) == "10.244.0.7:8080"


def test_the_map_is_read_on_every_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    monkeypatch.setenv(probes.ADDRESS_MAP_ENV, str(path))
    assert probes.address("10.244.0.7", 8080) == "10.244.0.7:8080"  # no file (yet): unchanged
    path.write_text(json.dumps({"10.244.0.7:8080": "127.0.0.1:41234"}))
    assert probes.address("10.244.0.7", 8080) == "127.0.0.1:41234"
    assert probes.address("10.244.0.8", 8080) == "10.244.0.8:8080"  # not in the map: unchanged
    path.write_text("not json")
    assert probes.address("10.244.0.7", 8080) == "10.244.0.7:8080"
