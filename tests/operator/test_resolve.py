"""The reconciler's look-ups of referenced Secrets, with the API server replaced by a dict (no test bed needed)."""

from __future__ import annotations

from typing import Any

import pytest

from sluice_operator._core import kubeapi, reconcile
from sluice_operator.model import SpecError

CENTRAL = {
    "elasticsearch": {"url": "http://es:9200", "index": "wx"},
    "publisher": {"auth": {"tokenSecretRef": {"name": "tokens"}}, "tls": {"secretRef": {"name": "tls"}}},
}
EDGE = {"forward": {"url": "https://central/in", "tokenSecretRef": {"name": "t"}, "caSecretRef": {"name": "ca"}}}


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, str]]:
    store: dict[str, dict[str, str]] = {}

    def get(kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        assert kind == "Secret"
        return {"data": store[name]} if name in store else None

    monkeypatch.setattr(kubeapi, "get", get)
    return store


def test_receivers_trust_the_tls_secrets_ca_when_it_has_one(secrets: dict[str, dict[str, str]]) -> None:
    secrets |= {"tokens": {"tokens": "x"}, "tls": {"tls.crt": "c", "tls.key": "k"}}
    assert reconcile._resolve("ns", CENTRAL)[2] == "tls.crt"
    secrets["tls"]["ca.crt"] = "a"
    assert reconcile._resolve("ns", CENTRAL)[2] == "ca.crt"


@pytest.mark.parametrize(
    ("spec", "store", "reason", "text"),
    [
        (CENTRAL, {"tokens": {"tokens": "x"}, "tls": {"tls.crt": "c"}}, "InvalidSecret", "no key 'tls.key'"),
        (CENTRAL, {"tls": {"tls.crt": "c", "tls.key": "k"}}, "SecretNotFound", "publisher.auth.tokenSecretRef"),
        (EDGE, {"ca": {"ca.crt": "a"}}, "SecretNotFound", "Secret t (forward.tokenSecretRef)"),
        (EDGE, {"t": {"token": "x"}, "ca": {"other": "a"}}, "InvalidSecret", "Secret ca has no key 'ca.crt'"),
    ],
)
def test_missing_secrets_and_keys_are_spec_errors(
    secrets: dict[str, dict[str, str]], spec: dict[str, Any], store: dict[str, dict[str, str]], reason: str,
    text: str,
) -> None:
    secrets |= store
    with pytest.raises(SpecError) as info:
        reconcile._resolve("ns", spec)
    assert info.value.reason == reason and text in info.value.message


def test_an_edge_with_its_secrets_resolves(secrets: dict[str, dict[str, str]]) -> None:
    secrets |= {"t": {"token": "x"}, "ca": {"ca.crt": "a"}}
    assert reconcile._resolve("ns", EDGE) == (None, None, "tls.crt")
