"""Beats-style fields files become the index template mappings users expect."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice_runtime.publisher.fields import FieldsError, fields_to_mappings, load_fields_file

WX_FIELDS = Path(__file__).resolve().parents[2] / "examples" / "wx-fields.yml"


def leaf(properties: dict, dotted: str) -> dict:
    *parents, name = dotted.split(".")
    for part in parents:
        properties = properties[part]["properties"]
    return properties[name]


def test_weather_fields_file_maps_every_field_with_its_type() -> None:
    mappings = load_fields_file(WX_FIELDS)
    properties = mappings.properties
    expected = {
        "rxtxMsg.time": "date",
        "rxtxMsg.producer": "keyword",
        "rxtxMsg.payload.latitude": "half_float",
        "rxtxMsg.payload.offset": "byte",
        "rxtxMsg.payload.currently.time": "long",
        "rxtxMsg.payload.currently.nearestStormDistance": "integer",
        "rxtxMsg.payload.currently.temperature": "half_float",
        "beat.name": "keyword",
        "@timestamp": "date",
        "error.message": "text",
        "error.code": "long",
    }
    for dotted, kind in expected.items():
        assert leaf(properties, dotted)["type"] == kind, dotted
    assert leaf(properties, "beat.name")["ignore_above"] == 1024
    assert leaf(properties, "error.message")["norms"] is False
    # Legacy `string` maps to keyword, with a warning that names the field.
    assert leaf(properties, "rxtxMsg.seq")["type"] == "keyword"
    assert any("rxtxMsg.seq" in warning and "string" in warning for warning in mappings.warnings)
    # `object` with `object_type` becomes a dynamic template for its sub-fields.
    assert mappings.dynamic_templates == [
        {
            "fields": {
                "path_match": "fields.*",
                "match_mapping_type": "string",
                "mapping": {"type": "keyword"},
            }
        }
    ]
    assert properties["fields"] == {"type": "object"}


def test_unknown_type_is_refused_naming_the_field() -> None:
    data = [{"key": "x", "fields": [{"name": "station", "type": "group", "fields": [{"name": "id", "type": "uuid"}]}]}]
    with pytest.raises(FieldsError, match=r"field 'station\.id': unknown type 'uuid'"):
        fields_to_mappings(data)


@pytest.mark.parametrize(
    ("field", "mapping"),
    [
        ({"name": "t", "type": "scaled_float", "scaling_factor": 100}, {"type": "scaled_float", "scaling_factor": 100}),
        ({"name": "t", "type": "date", "format": "epoch_millis"}, {"type": "date", "format": "epoch_millis"}),
        ({"name": "t", "type": "date", "format": "date"}, {"type": "date"}),  # a Kibana formatter, not an ES format
        ({"name": "t", "type": "alias", "path": "a.b"}, {"type": "alias", "path": "a.b"}),
        ({"name": "t", "type": "keyword", "ignore_above": -1}, {"type": "keyword"}),
        ({"name": "t", "type": "ip", "index": False}, {"type": "ip", "index": False}),
        (
            {"name": "t", "type": "text", "multi_fields": [{"name": "raw", "type": "keyword"}]},
            {"type": "text", "norms": False, "fields": {"raw": {"type": "keyword", "ignore_above": 1024}}},
        ),
        ({"name": "t", "type": "nested", "fields": [{"name": "n", "type": "long"}]},
         {"type": "nested", "properties": {"n": {"type": "long"}}}),
    ],
)  # fmt: skip
def test_field_mappings(field: dict, mapping: dict) -> None:
    assert fields_to_mappings([{"key": "k", "fields": [field]}]).properties["t"] == mapping


def test_every_leaf_type_is_accepted() -> None:
    from sluice_runtime.publisher.fields import LEAF_TYPES

    fields = [{"name": f"f_{kind}", "type": kind} for kind in sorted(LEAF_TYPES)]
    properties = fields_to_mappings([{"key": "k", "fields": fields}]).properties
    assert {value["type"] for value in properties.values()} == set(LEAF_TYPES)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"fields": []}, "top level must be a list"),
        ([{"key": "k", "fields": [{"type": "long"}]}], "needs a 'name'"),
        ([{"key": "k", "fields": [{"name": "a", "type": "long"}, {"name": "a.b", "type": "long"}]}],
         "'a' is a long field, so it cannot have sub-fields"),
        ([{"key": "k", "fields": [{"name": "a", "type": "long"}, {"name": "a", "type": "keyword"}]}],
         "defined twice"),
        ([{"key": "k", "fields": [{"name": "o", "type": "object", "object_type": "blob"}]}],
         "unknown object_type 'blob'"),
    ],
)  # fmt: skip
def test_unusable_files_are_refused_with_the_reason(data: object, message: str) -> None:
    with pytest.raises(FieldsError, match=message):
        fields_to_mappings(data)


def test_unreadable_or_invalid_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FieldsError, match="cannot be read"):
        load_fields_file(tmp_path / "missing.yml")
    broken = tmp_path / "broken.yml"
    broken.write_text("- key: [unclosed\n")
    with pytest.raises(FieldsError, match="not valid YAML"):
        load_fields_file(broken)
