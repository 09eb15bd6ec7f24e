"""Tool arguments checked with jsonschema, and the upstream-shaped Tool interface, through a real agent turn."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nanobot.agent.loop import AgentLoop
from nanobot.agent.tools.base import Tool
from nanobot.agent.tools.registry import ToolRegistry
from nanobot.agent.tools.validation import MAX_ERRORS, SchemaError, compile_schema, validate
from nanobot.bus.queue import MessageBus
from nanobot.testing.llm_server import FakeLLM, Rule
from tests.conftest import make_provider


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---------------------------------------------------------------- the keywords the old validator ignored

RICH: dict[str, Any] = {
    "type": "object",
    "$defs": {
        "point": {
            "type": "object",
            "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
            "required": ["x", "y"],
            "additionalProperties": False,
        }
    },
    "definitions": {"colour": {"enum": ["red", "green"]}},
    "properties": {
        "paths": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "shape": {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"kind": {"const": "circle"}, "radius": {"type": "number", "exclusiveMinimum": 0}},
                    "required": ["kind", "radius"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {"kind": {"const": "square"}, "side": {"type": "number"}},
                    "required": ["kind", "side"],
                    "additionalProperties": False,
                },
            ]
        },
        "origin": {"$ref": "#/$defs/point"},
        "colour": {"$ref": "#/definitions/colour"},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "version": {"const": 2},
        "tags": {"type": "array", "uniqueItems": True},
        "options": {
            "type": "object",
            "properties": {
                "inner": {
                    "type": "object",
                    "properties": {"mode": {"enum": ["a", "b"]}},
                    "additionalProperties": False,
                }
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"paths": "a.txt"},
        {"paths": ["a.txt", "b.txt"]},
        {"shape": {"kind": "circle", "radius": 1.5}},
        {"shape": {"kind": "square", "side": 2}},
        {"origin": {"x": 1, "y": -2.5}, "colour": "green", "code": "ABC", "version": 2, "tags": [1, 2]},
        {"options": {"inner": {"mode": "b"}}},
    ],
)
def test_rich_schema_accepts_valid_arguments(value: dict[str, Any]) -> None:
    assert validate(RICH, value) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"paths": 5}, ["paths: expected string or array, got integer"]),
        ({"paths": ["a", 5]}, ["paths[1]: expected string, got integer"]),
        ({"shape": {"kind": "circle", "radius": "big"}}, ["shape.radius: expected number, got string"]),
        ({"shape": {"kind": "circle", "radius": 0}}, ["shape.radius: must be > 0, got 0"]),
        ({"shape": {"kind": "triangle"}}, ["shape.kind: 'triangle' is not one of: 'circle', 'square'"]),
        (
            {"shape": {"kind": "square", "radius": 1}},
            ["shape: unexpected argument 'radius'", "missing required argument 'side' in shape"],
        ),
        ({"shape": "circle"}, ["shape: expected object, got string"]),
        ({"origin": {"x": 1}}, ["missing required argument 'y' in origin"]),
        ({"origin": {"x": 1, "y": 2, "z": 3}}, ["origin: unexpected argument 'z'"]),
        ({"colour": "blue"}, ["colour: 'blue' is not one of: 'red', 'green'"]),
        ({"code": "abcd"}, ["code: 'abcd' does not match the pattern '^[A-Z]{3}$'"]),
        ({"version": 3}, ["version: expected 2, got 3"]),
        ({"tags": [1, 1]}, ["tags: [1, 1] has non-unique elements"]),
        ({"options": {"inner": {"mode": "c"}}}, ["options.inner.mode: 'c' is not one of: 'a', 'b'"]),
        ({"options": {"inner": {"zz": 1}}}, ["options.inner: unexpected argument 'zz'"]),
        ({"surprise": 1}, ["unexpected argument 'surprise'"]),
    ],
)
def test_rich_schema_refuses_with_the_path(value: dict[str, Any], expected: list[str]) -> None:
    assert validate(RICH, value) == expected


def test_errors_are_capped_with_a_count() -> None:
    schema = {"type": "object", "additionalProperties": False}
    errors = validate(schema, {f"k{i}": i for i in range(MAX_ERRORS + 5)})
    assert len(errors) == MAX_ERRORS + 1
    assert errors[0] == "unexpected argument 'k0'"
    assert errors[-1] == "... and 5 more problems"


def test_long_values_are_shortened_in_messages() -> None:
    errors = validate({"enum": ["a"]}, "x" * 10_000)
    assert len(errors) == 1 and len(errors[0]) < 200 and errors[0].endswith("is not one of: 'a'")


def test_integer_follows_the_standard_and_booleans_are_not_numbers() -> None:
    assert validate({"type": "integer"}, 3.0) == []  # JSON Schema: 3.0 is an integer
    assert validate({"type": "integer"}, 3.5) == ["expected integer, got number"]
    assert validate({"type": "integer"}, True) == ["expected integer, got boolean"]
    assert validate({"const": 1}, True) == ["expected 1, got True"]


def test_schema_dialect_follows_dollar_schema() -> None:
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "number",
        "minimum": 1,
        "exclusiveMinimum": True,
    }
    assert validate(draft4, 1) == ["must be > 1, got 1"]
    assert validate(draft4, 1.5) == []
    # The same keywords are not a valid Draft 2020-12 schema (exclusiveMinimum must be a number there).
    with pytest.raises(SchemaError, match="exclusiveMinimum"):
        compile_schema({k: v for k, v in draft4.items() if k != "$schema"})


def test_invalid_schemas_are_refused_with_the_reason() -> None:
    with pytest.raises(SchemaError, match=r"properties\.a\.type"):
        compile_schema({"type": "object", "properties": {"a": {"type": "strin"}}})
    with pytest.raises(SchemaError, match="pattern"):
        compile_schema({"type": "string", "pattern": "("})
    with pytest.raises(SchemaError, match="not JSON"):
        compile_schema({"type": "object", "default": object()})
    with pytest.raises(SchemaError, match="must be a JSON object"):
        compile_schema(["type", "object"])


# ---------------------------------------------------------------- tools and the registry


class EchoTool(Tool):
    name = "echo"
    description = "Echo text."
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

    async def execute(self, **kwargs: Any) -> str:
        return str(kwargs["text"])


def _tool(name: str, parameters: Any) -> Tool:
    cls = type(f"Tool_{name}", (EchoTool,), {"name": name, "parameters": parameters})
    return cls()


def test_register_refuses_an_invalid_schema_naming_the_tool() -> None:
    registry = ToolRegistry()
    with pytest.raises(SchemaError, match=r"tool 'broken' .*properties\.a\.type"):
        registry.register(_tool("broken", {"type": "object", "properties": {"a": {"type": "strin"}}}))
    with pytest.raises(SchemaError, match=r"tool 'listy' .*type 'object'"):
        registry.register(_tool("listy", {"type": "array"}))
    with pytest.raises(SchemaError, match=r"tool 'none' .*must be a JSON schema dict"):
        registry.register(_tool("none", None))
    with pytest.raises(TypeError, match="has no name"):
        registry.register(_tool("", {"type": "object"}))
    assert registry.names == []


def test_registry_aliases_match_upstream() -> None:
    registry = ToolRegistry()
    registry.register(EchoTool())
    assert registry.has("echo") and not registry.has("nope")
    assert registry.tool_names == registry.names == ["echo"]
    assert registry.get_definitions() == registry.definitions() == [EchoTool().to_schema()]


def test_validator_is_built_once_per_schema() -> None:
    tool = EchoTool()
    assert tool._argument_schema() is tool._argument_schema()
    # A fresh dict with the same content (a `parameters` property building it on each call) reuses it too.
    assert compile_schema(json.loads(json.dumps(EchoTool.parameters))) is tool._argument_schema()


def test_registry_arguments_that_cannot_be_parsed_give_error_text() -> None:
    registry = ToolRegistry()
    registry.register(EchoTool())
    deep = '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert run(registry.execute("echo", deep)) == (
        "Error: invalid arguments for tool 'echo': arguments are nested too deeply"
    )
    huge = '{"text": 1' + "0" * 10_000 + "}"
    assert run(registry.execute("echo", huge)).startswith(
        "Error: invalid arguments for tool 'echo': arguments are not usable JSON"
    )


class _CountingHandler(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = json.dumps({"type": "string"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def schema_server() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    handler = type("Handler", (_CountingHandler,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/schema.json", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_ref_to_a_url_is_never_fetched(schema_server: tuple[str, list[str]]) -> None:
    url, hits = schema_server
    registry = ToolRegistry()
    registry.register(_tool("remote", {"type": "object", "properties": {"text": {"$ref": url}}}))
    result = run(registry.execute("remote", {"text": "hi"}))
    assert result.startswith("Error: invalid arguments for tool 'remote': ")
    assert "reference that cannot be resolved" in result
    assert hits == []


class RangeTool(Tool):
    """Overrides validate_params to add a rule across two arguments."""

    name = "range"
    description = "Count from start to end."
    parameters = {
        "type": "object",
        "properties": {"start": {"type": "integer"}, "end": {"type": "integer"}},
        "required": ["start", "end"],
    }

    def validate_params(self, params: dict[str, Any]) -> list[str]:
        errors = super().validate_params(params)
        if not errors and params["start"] > params["end"]:
            errors.append("start must not be after end")
        return errors

    async def execute(self, start: int, end: int, **kwargs: Any) -> str:
        return " ".join(str(n) for n in range(start, end + 1))


class ExplodingCheckTool(EchoTool):
    name = "exploding"

    def validate_params(self, params: dict[str, Any]) -> list[str]:
        raise RuntimeError("checker broke")


def test_registry_uses_the_tools_own_validate_params() -> None:
    registry = ToolRegistry()
    registry.register(RangeTool())
    registry.register(ExplodingCheckTool())
    assert run(registry.execute("range", {"start": 1, "end": 3})) == "1 2 3"
    assert run(registry.execute("range", {"start": 5, "end": 3})) == (
        "Error: invalid arguments for tool 'range': start must not be after end"
    )
    assert run(registry.execute("range", {"start": "5", "end": 3})) == (
        "Error: invalid arguments for tool 'range': start: expected integer, got string"
    )
    assert run(registry.execute("exploding", {"text": "x"})) == (
        "Error: cannot check the arguments of tool 'exploding': RuntimeError: checker broke"
    )


# ---------------------------------------------------------------- an upstream-style tool in a real turn


class WeatherTool(Tool):
    """Written as an upstream nanobot user writes a tool: properties, keyword arguments."""

    @property
    def name(self) -> str:
        return "weather"

    @property
    def description(self) -> str:
        return "Current weather for a city."

    @property
    def parameters(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        }

    async def execute(self, city: str, **kwargs: Any) -> str:
        units = kwargs.get("units", "celsius")
        return f"Sunny in {city}, 21 degrees {units}"


def test_upstream_style_tool_runs_in_a_real_turn(fake_llm: FakeLLM, workspace: Path) -> None:
    fake_llm.add_rule(Rule(match="weather", tool_calls=[{"name": "weather", "arguments": {"town": "Paris"}}]))
    fake_llm.add_rule(
        Rule(
            match="weather",
            when_last_role="tool",
            tool_calls=[{"name": "weather", "arguments": {"city": "Paris", "units": "celsius"}}],
        )
    )

    async def scenario() -> str:
        loop = AgentLoop(MessageBus(), make_provider(fake_llm), workspace)
        try:
            loop.tools.register(WeatherTool())
            assert loop.tools.has("weather")
            return await loop.process_direct("what is the weather in Paris?")
        finally:
            await loop.close()

    assert run(scenario()) == "tool said: Sunny in Paris, 21 degrees celsius"
    requests = fake_llm.requests
    assert len(requests) == 3
    offered = {t["function"]["name"]: t["function"] for t in requests[0].tools or []}
    assert offered["weather"]["parameters"]["required"] == ["city"]
    assert offered["weather"]["description"] == "Current weather for a city."
    refusal = requests[1].messages[-1]
    assert refusal["role"] == "tool"
    assert refusal["content"] == "Error: invalid arguments for tool 'weather': missing required argument 'city'"
    assert requests[2].messages[-1]["content"] == "Sunny in Paris, 21 degrees celsius"
