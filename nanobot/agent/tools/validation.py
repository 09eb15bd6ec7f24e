"""A small JSON-schema validator for the subset of keywords tool parameter schemas use.

Supported: type (a name or a list of names), properties, required, additionalProperties (false or a
schema), enum, minimum/maximum, minLength/maxLength, items, minItems/maxItems. Unknown keywords are
ignored. `validate` returns human-readable errors; an empty list means the value is valid.
"""

from __future__ import annotations

from typing import Any

_TYPE_NAMES: dict[type, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def type_name(value: Any) -> str:
    """The JSON type name of a Python value (tuples count as arrays)."""
    if isinstance(value, tuple):
        return "array"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _matches_type(value: Any, expected: str) -> bool:
    if expected == "integer":
        # bool is a subclass of int in Python but not an integer in JSON. Floats such as 3.0 are refused
        # too (stricter than JSON Schema) so that a tool declaring an integer really receives an int.
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "string":
        return isinstance(value, str)
    if expected == "array":
        return isinstance(value, list | tuple)
    if expected == "object":
        return isinstance(value, dict)
    if expected == "null":
        return value is None
    return True  # an unknown type name does not reject anything


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _prefix(path: str) -> str:
    return f"{path}: " if path else ""


def validate(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Check `value` against `schema`; return the list of problems found (empty when valid)."""
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_matches_type(value, name) for name in names):
            wanted = " or ".join(names)
            return [f"{_prefix(path)}expected {wanted}, got {type_name(value)}"]

    errors: list[str] = []
    if "enum" in schema and not _in_enum(value, schema["enum"]):
        options = ", ".join(repr(option) for option in schema["enum"])
        errors.append(f"{_prefix(path)}{value!r} is not one of: {options}")

    if isinstance(value, int | float) and not isinstance(value, bool):
        errors.extend(_check_number(schema, value, path))
    elif isinstance(value, str):
        errors.extend(_check_string(schema, value, path))
    elif isinstance(value, list | tuple):
        errors.extend(_check_array(schema, list(value), path))
    elif isinstance(value, dict):
        errors.extend(_check_object(schema, value, path))
    return errors


def _in_enum(value: Any, options: list[Any]) -> bool:
    # Keep True distinct from 1 (and False from 0), as JSON does.
    return any(value == option and isinstance(value, bool) == isinstance(option, bool) for option in options)


def _check_number(schema: dict[str, Any], value: float, path: str) -> list[str]:
    errors: list[str] = []
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{_prefix(path)}must be >= {schema['minimum']}, got {value}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{_prefix(path)}must be <= {schema['maximum']}, got {value}")
    return errors


def _check_string(schema: dict[str, Any], value: str, path: str) -> list[str]:
    errors: list[str] = []
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{_prefix(path)}must be at least {schema['minLength']} characters long")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{_prefix(path)}must be at most {schema['maxLength']} characters long")
    return errors


def _check_array(schema: dict[str, Any], value: list[Any], path: str) -> list[str]:
    errors: list[str] = []
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{_prefix(path)}must have at least {schema['minItems']} items, got {len(value)}")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{_prefix(path)}must have at most {schema['maxItems']} items, got {len(value)}")
    items = schema.get("items")
    if isinstance(items, dict):
        for index, item in enumerate(value):
            errors.extend(validate(items, item, _join(path, index)))
    return errors


def _check_object(schema: dict[str, Any], value: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    properties: dict[str, Any] = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in value:
            where = f" in {path}" if path else ""
            errors.append(f"missing required argument '{key}'{where}")
    additional = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            errors.extend(validate(properties[key], item, _join(path, key)))
        elif additional is False:
            errors.append(f"{_prefix(path)}unexpected argument '{key}'")
        elif isinstance(additional, dict):
            errors.extend(validate(additional, item, _join(path, key)))
    return errors
