"""How a ``_bulk`` answer is read: the failed items by position, whatever the engine's formatting."""

from __future__ import annotations

import orjson
import pytest

from sluice_runtime.publisher.bulk import ItemFailure, failures
from sluice_runtime.publisher.engine import EngineError

STORED = {"create": {"status": 201}}
CONFLICT = {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "exists"}}}
MAPPING = {"create": {"status": 400, "error": {"type": "document_parsing_exception", "reason": "not a number"}}}


@pytest.mark.parametrize(
    "answer",
    [
        orjson.dumps({"errors": False, "items": [STORED] * 3}),
        # Formatted otherwise (pretty, or other fields first): parsed in full, with the same result.
        orjson.dumps({"took": 3, "errors": False, "items": [STORED] * 3}, option=orjson.OPT_INDENT_2),
    ],
)
def test_an_answer_with_no_errors_has_no_failures(answer: bytes) -> None:
    assert failures(answer, 3) == {}


def test_failed_items_are_named_by_position() -> None:
    answer = orjson.dumps({"errors": True, "items": [STORED, MAPPING, CONFLICT]})
    assert failures(answer, 3) == {
        1: ItemFailure(400, MAPPING["create"]["error"]),
        2: ItemFailure(409, CONFLICT["create"]["error"]),
    }


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"<html>bad gateway</html>", "not JSON"),
        (b"[]", "not an object"),
        (orjson.dumps({"errors": True, "items": [MAPPING]}), "lists 1 items for 3 documents"),
    ],
)
def test_an_answer_that_cannot_be_accounted_for_is_an_engine_error(answer: bytes, problem: str) -> None:
    with pytest.raises(EngineError, match=problem):
        failures(answer, 3)
