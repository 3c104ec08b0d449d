"""Beats-style fields files turned into index template mappings.

The file is a list of ``- key: …`` entries, each with ``title``, ``description`` and ``fields``.
A field has ``name`` (dots nest), ``type`` (missing means keyword) and the Beats mapping keys.
``group`` and ``nested`` fields nest their ``fields`` under their name, and ``object`` with
``object_type`` becomes a dynamic template. This follows libbeat's template processor, with two
deliberate differences: ``integer`` stays ``integer`` (libbeat widened it to ``long``), and an
unknown type is an error naming the field instead of being passed to the engine as is.
Documentation-only keys (``description``, ``required``, ``example``…) are ignored.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice_runtime.common.config import load_yaml_file

DEFAULT_IGNORE_ABOVE = 1024
DEFAULT_SCALING_FACTOR = 1000

# Types whose mapping is just ``{"type": name}`` plus the common keys.
_PLAIN_TYPES = frozenset(
    {
        "binary", "boolean", "byte", "short", "integer", "long", "unsigned_long",
        "float", "double", "half_float", "ip", "version",
        "geo_point", "geo_shape", "point", "shape",
        "completion", "search_as_you_type", "token_count", "percolator",
        "rank_feature", "rank_features", "dense_vector", "sparse_vector",
        "flattened", "histogram", "constant_keyword", "match_only_text",
        "integer_range", "long_range", "float_range", "double_range", "date_range", "ip_range",
    }
)  # fmt: skip
_DATE_TYPES = frozenset({"date", "date_nanos"})
_KEYWORD_LIKE = frozenset({"keyword", "wildcard"})
_CONTAINERS = frozenset({"group", "nested", "object"})
_ANALYZED = frozenset({"text", "search_as_you_type", "completion", "token_count"})
LEAF_TYPES = _PLAIN_TYPES | _DATE_TYPES | _KEYWORD_LIKE | {"text", "scaled_float"}
KNOWN_TYPES = LEAF_TYPES | _CONTAINERS | {"alias", "array", "string"}

# Kibana field formatters: in a Beats fields file ``format`` names one of these. Any other
# ``format`` on a date field is taken as an Elasticsearch date format.
_KIBANA_FORMATS = frozenset({"string", "url", "bytes", "duration", "number", "percent", "color", "date", "geo_point"})

# The JSON kind a dynamic template matches for each ``object_type`` (Elasticsearch 8 refuses
# numeric kinds other than long and double).
_MATCH_MAPPING_TYPE = {
    **dict.fromkeys(["keyword", "wildcard", "text", "match_only_text", "constant_keyword", "ip", "version"], "string"),
    **dict.fromkeys(["date", "date_nanos"], "string"),
    **dict.fromkeys(["byte", "short", "integer", "long", "unsigned_long"], "long"),
    **dict.fromkeys(["float", "double", "half_float"], "double"),
    "boolean": "boolean",
}
_DYNAMIC_VALUES = {True: True, False: False, "true": True, "false": False, "strict": "strict", "runtime": "runtime"}


class FieldsError(ValueError):
    """A fields file that cannot be turned into a template; the message names the field."""


@dataclass(frozen=True)
class FieldMappings:
    properties: dict[str, Any]
    dynamic_templates: list[dict[str, Any]]
    warnings: tuple[str, ...]

    def as_mappings(self) -> dict[str, Any]:
        mappings: dict[str, Any] = {"properties": copy.deepcopy(self.properties)}
        if self.dynamic_templates:
            mappings["dynamic_templates"] = copy.deepcopy(self.dynamic_templates)
        return mappings


def load_fields_file(path: str | Path) -> FieldMappings:
    data = load_yaml_file(path, "fields file", FieldsError)
    return fields_to_mappings(data, source=str(path))


def fields_to_mappings(data: Any, source: str = "fields file") -> FieldMappings:
    """Mappings from the parsed YAML of a fields file; raises :class:`FieldsError` naming the field."""
    if not isinstance(data, list):
        raise FieldsError(f"{source}: the top level must be a list of '- key: …' entries with 'fields'")
    builder = _Builder(source)
    for position, entry in enumerate(data):
        if not isinstance(entry, Mapping):
            raise FieldsError(f"{source}: top-level entry {position} must be a mapping with 'key' and 'fields'")
        builder.process(entry.get("fields") or [], prefix="", where=f"key {entry.get('key', position)!s}")
    return FieldMappings(builder.properties, builder.dynamic_templates, tuple(builder.warnings))


class _Builder:
    def __init__(self, source: str) -> None:
        self.source = source
        self.properties: dict[str, Any] = {}
        self.dynamic_templates: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self._dynamic_names: set[str] = set()

    def fail(self, path: str, problem: str) -> FieldsError:
        return FieldsError(f"{self.source}: field {path!r}: {problem}")

    def process(self, fields: Any, prefix: str, where: str) -> None:
        if not isinstance(fields, list):
            raise FieldsError(f"{self.source}: {where}: 'fields' must be a list")
        for position, field in enumerate(fields):
            if not isinstance(field, Mapping) or not isinstance(field.get("name"), str) or not field["name"]:
                raise FieldsError(f"{self.source}: {where}: entry {position} of 'fields' needs a 'name'")
            self.field(field, f"{prefix}{field['name']}")

    def field(self, field: Mapping[str, Any], path: str) -> None:
        kind = field.get("type") or "keyword"
        if not isinstance(kind, str) or kind not in KNOWN_TYPES:
            raise self.fail(path, f"unknown type {kind!r}; known types: {', '.join(sorted(KNOWN_TYPES))}")
        if kind == "string":
            self.warnings.append(f"field {path!r}: type 'string' is a legacy alias and is mapped to keyword")
            kind = "keyword"
        if kind in _CONTAINERS:
            self.container(field, path, kind)
        elif kind == "array":
            # libbeat leaves arrays to dynamic mapping unless an element type is given.
            if field.get("object_type"):
                self.put_leaf(path, self.leaf_mapping(field, path, self.element_type(field, path)))
        else:
            self.put_leaf(path, self.leaf_mapping(field, path, kind))

    def container(self, field: Mapping[str, Any], path: str, kind: str) -> None:
        attributes: dict[str, Any] = {}
        if kind != "group":
            attributes["type"] = kind
        for key, value in _flags(field, path, self.fail, ("enabled",)).items():
            attributes[key] = value
        if "dynamic" in field:
            if field["dynamic"] not in _DYNAMIC_VALUES:
                raise self.fail(path, f"dynamic must be true, false, strict or runtime, not {field['dynamic']!r}")
            attributes["dynamic"] = _DYNAMIC_VALUES[field["dynamic"]]
        node = self.node(path)
        if node.get("type", "object") not in ("object", "nested"):
            raise self.fail(path, f"is a {node['type']} field elsewhere in the file, so it cannot be a {kind}")
        for key, value in attributes.items():
            if key in node and node[key] != value:
                raise self.fail(path, f"defined twice with different {key!r}: {node[key]!r} and {value!r}")
            node[key] = value
        if kind == "object":
            self.object_types(field, path)
        self.process(field.get("fields") or [], prefix=f"{path}.", where=f"field {path!r}")

    def object_types(self, field: Mapping[str, Any], path: str) -> None:
        params = field.get("object_type_params")
        if params is None:
            params = [field] if field.get("object_type") else []
        elif not isinstance(params, list) or field.get("object_type"):
            raise self.fail(path, "object_type_params must be a list and cannot be mixed with object_type")
        path_match = path if "*" in path else f"{path}.*"
        for param in params:
            element = self.element_type(param, path)
            mapping = self.leaf_mapping({**field, **param, "ignore_above": -1}, path, element)
            match = param.get("object_type_mapping_type") or _MATCH_MAPPING_TYPE.get(element, "*")
            name = path if len(params) == 1 else f"{path}_{match}"
            if name in self._dynamic_names:
                continue
            self._dynamic_names.add(name)
            self.dynamic_templates.append(
                {name: {"path_match": path_match, "match_mapping_type": match, "mapping": mapping}}
            )

    def element_type(self, field: Mapping[str, Any], path: str) -> str:
        element = field.get("object_type")
        if element == "string":
            self.warnings.append(f"field {path!r}: object_type 'string' is a legacy alias and is mapped to keyword")
            return "keyword"
        if not isinstance(element, str) or element not in LEAF_TYPES:
            raise self.fail(path, f"unknown object_type {element!r}; known: {', '.join(sorted(LEAF_TYPES))}")
        return element

    def leaf_mapping(self, field: Mapping[str, Any], path: str, kind: str) -> dict[str, Any]:
        mapping: dict[str, Any] = {"type": kind}
        mapping.update(_flags(field, path, self.fail, ("index", "doc_values")))
        if field.get("copy_to"):
            mapping["copy_to"] = field["copy_to"]
        if kind in _KEYWORD_LIKE:
            ignore_above = field.get("ignore_above", 0) or DEFAULT_IGNORE_ABOVE
            if not isinstance(ignore_above, int) or isinstance(ignore_above, bool):
                raise self.fail(path, f"ignore_above must be an integer, not {ignore_above!r}")
            if ignore_above > 0:
                mapping["ignore_above"] = ignore_above
        if kind == "text" and not field.get("norms", False):
            mapping["norms"] = False
        if kind in _ANALYZED:
            for key in ("analyzer", "search_analyzer"):
                if field.get(key):
                    mapping[key] = field[key]
        if kind == "scaled_float":
            factor = field.get("scaling_factor") or DEFAULT_SCALING_FACTOR
            if not isinstance(factor, int | float) or isinstance(factor, bool) or factor <= 0:
                raise self.fail(path, f"scaling_factor must be a positive number, not {factor!r}")
            mapping["scaling_factor"] = factor
        if kind in _DATE_TYPES and field.get("format") and field["format"] not in _KIBANA_FORMATS:
            mapping["format"] = field["format"]
        if kind == "alias":
            if not isinstance(field.get("path"), str) or not field["path"]:
                raise self.fail(path, "an alias needs 'path', the field it points to")
            mapping["path"] = field["path"]
        if field.get("multi_fields"):
            mapping["fields"] = self.multi_fields(field["multi_fields"], path)
        return mapping

    def multi_fields(self, entries: Any, path: str) -> dict[str, Any]:
        if not isinstance(entries, list):
            raise self.fail(path, "multi_fields must be a list")
        out: dict[str, Any] = {}
        for entry in entries:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                raise self.fail(path, "each of multi_fields needs a 'name'")
            sub_path = f"{path}.{entry['name']}"
            kind = entry.get("type") or "keyword"
            if kind == "string":
                kind = "keyword"
            if kind not in LEAF_TYPES:
                raise self.fail(sub_path, f"unknown type {kind!r} in multi_fields")
            out[entry["name"]] = self.leaf_mapping(entry, sub_path, kind)
        return out

    def node(self, path: str) -> dict[str, Any]:
        """The mapping node for ``path``, creating intermediate objects for its dotted parents."""
        properties = self.properties
        *parents, leaf = path.split(".")
        walked = ""
        for part in parents:
            walked = f"{walked}.{part}" if walked else part
            parent = properties.setdefault(part, {})
            if parent.get("type", "object") not in ("object", "nested"):
                raise self.fail(path, f"{walked!r} is a {parent['type']} field, so it cannot have sub-fields")
            properties = parent.setdefault("properties", {})
        return properties.setdefault(leaf, {})

    def put_leaf(self, path: str, mapping: dict[str, Any]) -> None:
        node = self.node(path)
        if node and node != mapping:
            raise self.fail(path, f"defined twice with different mappings: {node} and {mapping}")
        node.update(mapping)


def _flags(
    field: Mapping[str, Any], path: str, fail: Callable[[str, str], FieldsError], keys: tuple[str, ...]
) -> dict[str, bool]:
    flags: dict[str, bool] = {}
    for key in keys:
        if key in field and field[key] is not None:
            if not isinstance(field[key], bool):
                raise fail(path, f"{key} must be true or false, not {field[key]!r}")
            flags[key] = field[key]
    return flags
