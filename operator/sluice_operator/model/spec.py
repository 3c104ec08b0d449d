"""Spec defaults, the Secrets a spec references, and the checks the CRD schema cannot express (the fields list)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

# The same defaults as the CRD, so render gives the same answer for a raw spec (unit tests, dry runs)
# as for one the API server has defaulted.
DEFAULTS: dict[str, Any] = {
    "receiver": {
        "replicas": 1,
        "storage": {"size": "1Gi"},
        "queue": {"maxMessages": 500000, "whenFull": "reject"},
        "batch": {"maxMessages": 4000, "maxWait": "10s"},
    },
    "publisher": {"replicas": 1},
    "networkPolicy": {"enabled": False},
    "serviceAccount": {"create": False},
}

MAX_FIELD_DEPTH = 16

# Default keys of the Secret references, as in the CRD (a raw spec in a unit test has no defaulted keys).
FORWARD_TOKEN_KEY = "token"
CA_KEY = "ca.crt"
TOKENS_KEY = "tokens"
TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"


@dataclass(frozen=True)
class SecretUse:
    """One Secret the pods mount: where the spec names it, and the keys it must hold."""

    where: str
    name: str
    keys: tuple[str, ...]


def is_edge(spec: Mapping[str, Any]) -> bool:
    """An edge pipeline forwards to a publisher elsewhere and renders none of its own."""
    return bool((spec or {}).get("forward"))


def ref_key(ref: Mapping[str, Any], default: str) -> str:
    return str(ref.get("key") or default)


def secret_uses(spec: Mapping[str, Any]) -> list[SecretUse]:
    """Every Secret reference whose keys are mounted as files (the ES credentials are checked apart: either set)."""
    s = spec or {}
    es, forward = s.get("elasticsearch") or {}, s.get("forward") or {}
    publisher = s.get("publisher") or {}
    candidates = [
        ("elasticsearch.caSecretRef", es.get("caSecretRef"), CA_KEY),
        ("receiver.auth.tokenSecretRef", ((s.get("receiver") or {}).get("auth") or {}).get("tokenSecretRef"),
         TOKENS_KEY),
        ("forward.tokenSecretRef", forward.get("tokenSecretRef"), FORWARD_TOKEN_KEY),
        ("forward.caSecretRef", forward.get("caSecretRef"), CA_KEY),
        ("publisher.auth.tokenSecretRef", (publisher.get("auth") or {}).get("tokenSecretRef"), TOKENS_KEY),
    ]
    uses = [SecretUse(where, ref["name"], (ref_key(ref, default),)) for where, ref, default in candidates if ref]
    tls_ref = (publisher.get("tls") or {}).get("secretRef")
    if tls_ref:
        uses.append(SecretUse("publisher.tls.secretRef", tls_ref["name"], (TLS_CERT_KEY, TLS_KEY_KEY)))
    return uses


class SpecError(ValueError):
    """A spec the schema admitted but the operator cannot realise; ``reason`` becomes the condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def with_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(base)
        for key, value in over.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out

    return merge(DEFAULTS, spec or {})


def parse_fields(source: str | list[Any] | None, origin: str) -> list[Any]:
    """A Beats-style fields list from YAML text or an inline list, or :class:`SpecError` naming the problem."""
    if source is None:
        return []
    if isinstance(source, str):
        try:
            value = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise SpecError("InvalidFields", f"{origin} is not valid YAML: {exc}") from None
    else:
        value = source
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError("InvalidFields", f"{origin} must be a list of fields (Beats fields.yml shape)")
    problems: list[str] = []
    _check(value, origin, problems, depth=0)
    if problems:
        shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        raise SpecError("InvalidFields", shown)
    return value


def _check(entries: list[Any], where: str, problems: list[str], depth: int) -> None:
    if depth > MAX_FIELD_DEPTH:
        problems.append(f"{where}: nested deeper than {MAX_FIELD_DEPTH} levels")
        return
    for index, entry in enumerate(entries):
        here = f"{where}[{index}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{here}: must be a mapping with a name (or a key and fields)")
            continue
        label = entry.get("name", entry.get("key"))
        if not isinstance(label, str) or not label:
            problems.append(f"{here}: needs a non-empty string name (or key)")
        if "type" in entry and not isinstance(entry["type"], str):
            problems.append(f"{here} ({label}): type must be a string")
        if "fields" in entry:
            if not isinstance(entry["fields"], list):
                problems.append(f"{here} ({label}): fields must be a list")
            else:
                _check(entry["fields"], f"{here}.fields", problems, depth + 1)
