"""The README stays true: its configuration reference matches the code and the CRD."""

from __future__ import annotations

from tools import reference


def test_configuration_reference_is_current() -> None:
    readme = reference.README.read_text()
    assert reference.readme_with_reference(readme) == readme, "run `make docs` to regenerate the reference"


def test_reference_lists_every_flag_and_contract_field() -> None:
    text = reference.reference()
    for name in ("--max-queue", "SLUICE_MAX_QUEUE", "--es-url", "SLUICE_ES_URL", "--fields", "--when-full"):
        assert f"`{name}`" in text
    for path in ("spec.receiver.queue.maxMessages", "spec.receiver.batch.maxMessages", "spec.elasticsearch.index"):
        assert f"`{path}`" in text
