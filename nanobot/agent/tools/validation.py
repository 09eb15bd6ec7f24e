"""Tool arguments checked against the tool's JSON schema with `jsonschema`, errors phrased for the model.

All of JSON Schema applies (Draft 2020-12 unless the schema names another draft in `$schema`), `format`
included. `compile_schema` checks a schema once and caches the validator by the schema's content;
`ArgumentSchema.errors` returns one readable line per problem, with the JSON path of the offending value.
References are resolved inside the schema only: a `$ref` to a URL is never fetched.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from jsonschema_specifications import REGISTRY as METASCHEMAS
from referencing.exceptions import Unresolvable

MAX_ERRORS = 10
_MAX_REPR = 80
_MAX_LINE = 300
_CACHE_SIZE = 256
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

_TYPE_NAMES: dict[type, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


class SchemaError(ValueError):
    """A schema that is not valid JSON Schema (or not JSON at all)."""


def type_name(value: Any) -> str:
    """The JSON type name of a Python value (tuples count as arrays)."""
    if isinstance(value, tuple):
        return "array"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class ArgumentSchema:
    """A checked schema and its validator; `errors` lists what is wrong with a value."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        cls = _validator_class(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = _format_path(exc.absolute_path)
            raise SchemaError(f"{where + ': ' if where else ''}{_clip(exc.message)}") from None
        except RecursionError:
            raise SchemaError("the schema is nested too deeply") from None
        # An explicit registry that knows only the metaschemas: without it jsonschema fetches `$ref` URLs.
        self.validator: Validator = cls(schema, registry=METASCHEMAS, format_checker=cls.FORMAT_CHECKER)

    def errors(self, value: Any, limit: int = MAX_ERRORS) -> list[str]:
        """The problems with `value`, one line each (at most `limit`, then a count); empty when valid."""
        try:
            raw = list(self.validator.iter_errors(value))
        except Unresolvable as exc:
            return [f"the tool's parameter schema has a reference that cannot be resolved ({_clip(str(exc))})"]
        except RecursionError:
            return ["the arguments are nested too deeply to check"]
        lines = list(dict.fromkeys(_lines(_without_shadowed(raw))))
        if len(lines) > limit:
            return [*lines[:limit], f"... and {len(lines) - limit} more problems"]
        return lines


def compile_schema(schema: Any) -> ArgumentSchema:
    """The validator for `schema`, built once per distinct schema; raises SchemaError when it is invalid."""
    if not isinstance(schema, Mapping):
        raise SchemaError(f"a schema must be a JSON object, got {type_name(schema)}")
    try:
        key = json.dumps(schema, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"the schema is not JSON: {exc}") from None
    except RecursionError:
        raise SchemaError("the schema is nested too deeply") from None
    return _compile(key)


@lru_cache(maxsize=_CACHE_SIZE)
def _compile(key: str) -> ArgumentSchema:
    # Built from the canonical JSON text, so later changes to the caller's dict cannot alter a cached validator.
    return ArgumentSchema(json.loads(key))


def validate(schema: Any, value: Any) -> list[str]:
    """Check `value` against `schema`; return the list of problems found (empty when valid)."""
    return compile_schema(schema).errors(value)


def _validator_class(schema: Mapping[str, Any]) -> type[Validator]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # an unknown $schema falls back to the default
        return validator_for(schema, default=Draft202012Validator)


def _without_shadowed(errors: list[ValidationError]) -> Iterator[ValidationError]:
    """Drop the other complaints about a value whose type is already wrong for the same subschema."""
    wrong_type = {_site(e) for e in errors if e.validator == "type"}
    for error in errors:
        if error.validator == "type" or _site(error) not in wrong_type:
            yield error


def _site(error: ValidationError) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    return tuple(error.absolute_path), tuple(error.absolute_schema_path)[:-1]


def _lines(errors: Iterable[ValidationError]) -> Iterator[str]:
    for error in errors:
        yield from _describe(error)


def _describe(error: ValidationError) -> Iterator[str]:
    keyword, expected, value = error.validator, error.validator_value, error.instance
    path = _format_path(error.absolute_path)
    at = f"{path}: " if path else ""
    if keyword in ("anyOf", "oneOf") and error.context:
        yield from _describe_alternatives(error, at)
    elif keyword == "required" and isinstance(value, dict):
        where = f" in {path}" if path else ""
        for key in expected:
            if key not in value:
                yield f"missing required argument '{key}'{where}"
    elif keyword == "additionalProperties" and expected is False and isinstance(value, dict):
        for key in _additional_keys(error.schema, value):
            yield f"{at}unexpected argument '{key}'"
    elif keyword == "type":
        names = expected if isinstance(expected, list) else [expected]
        yield f"{at}expected {' or '.join(map(str, names))}, got {type_name(value)}"
    else:
        yield at + _clip(_message(str(keyword), expected, value, error))


def _describe_alternatives(error: ValidationError, at: str) -> Iterator[str]:
    """An anyOf/oneOf miss: the errors of the one branch the value plausibly meant, else the best match."""
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context or []:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    plausible = [errs for errs in branches.values() if not any(_rules_out(sub) for sub in errs)]
    if len(plausible) == 1:
        yield from _lines(_without_shadowed(plausible[0]))
        return
    context = error.context or []
    if all(sub.validator == "type" and not sub.relative_path for sub in context):
        names: list[str] = []
        for sub in context:
            names.extend(sub.validator_value if isinstance(sub.validator_value, list) else [sub.validator_value])
        yield f"{at}expected {' or '.join(dict.fromkeys(map(str, names)))}, got {type_name(error.instance)}"
        return
    # Every branch ruled out: when the branches that fit the value's type differ by one constant, name them.
    reasons = [next(sub for sub in errs if _rules_out(sub)) for errs in branches.values()] if not plausible else []
    consts = [sub for sub in reasons if sub.validator == "const"]
    if consts and len({tuple(sub.absolute_path) for sub in consts}) == 1:
        where = _format_path(consts[0].absolute_path)
        options = ", ".join(dict.fromkeys(_short(sub.validator_value) for sub in consts))
        yield f"{where + ': ' if where else ''}{_short(consts[0].instance)} is not one of: {options}"
        return
    best = best_match(sub for errs in (plausible or branches.values()) for sub in errs)
    if best is None:
        yield at + _clip(error.message)
        return
    allowed = "one" if error.validator == "anyOf" else "exactly one"
    for line in _describe(best):
        yield f"{line} (the value must match {allowed} of the allowed forms)"


def _rules_out(error: ValidationError) -> bool:
    """Whether this error shows the branch was not the one meant: a wrong type for the whole value, or a
    wrong constant in a direct property (a discriminator such as `"kind": {"const": "circle"}`)."""
    if error.validator == "type":
        return not error.relative_path
    if error.validator == "const":
        return len(error.relative_path) <= 1
    return False


def _additional_keys(schema: Any, value: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {}) if isinstance(schema, Mapping) else {}
    patterns = schema.get("patternProperties", {}) if isinstance(schema, Mapping) else {}
    return [key for key in value if key not in properties and not any(re.search(pattern, key) for pattern in patterns)]


def _format_path(path: Iterable[Any]) -> str:
    """`options.depth`, `tags[1]`, `headers["Content-Type"]`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.fullmatch(str(part)):
            text += f".{part}" if text else str(part)
        else:
            text += f"[{json.dumps(str(part))}]"
    return text


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_LINE else text[: _MAX_LINE - 3] + "..."


def _message(keyword: str, expected: Any, value: Any, error: ValidationError) -> str:
    """Our wording for the common keywords; jsonschema's own message for the rest."""
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    match keyword:
        case "enum":
            return f"{_short(value)} is not one of: {', '.join(map(_short, expected))}"
        case "const":
            return f"expected {_short(expected)}, got {_short(value)}"
        case "minimum":
            sign = ">" if schema.get("exclusiveMinimum") is True else ">="  # draft 4's boolean form
            return f"must be {sign} {expected}, got {value}"
        case "maximum":
            sign = "<" if schema.get("exclusiveMaximum") is True else "<="
            return f"must be {sign} {expected}, got {value}"
        case "exclusiveMinimum":
            return f"must be > {expected}, got {value}"
        case "exclusiveMaximum":
            return f"must be < {expected}, got {value}"
        case "minLength":
            return f"must be at least {expected} characters long"
        case "maxLength":
            return f"must be at most {expected} characters long"
        case "minItems":
            return f"must have at least {expected} items, got {len(value)}"
        case "maxItems":
            return f"must have at most {expected} items, got {len(value)}"
        case "pattern":
            return f"{_short(value)} does not match the pattern {_short(expected)}"
        case "format":
            return f"{_short(value)} is not a valid {expected}"
    return error.message
