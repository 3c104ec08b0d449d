"""The pure model: spec in, manifests out. Imports no Kubernetes client and does no I/O."""

from sluice_operator.model.render import render
from sluice_operator.model.spec import SpecError, parse_fields

__all__ = ["SpecError", "parse_fields", "render"]
