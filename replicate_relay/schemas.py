"""The published contracts (schemas/, docs/SCHEMAS.md), made from the models: `python -m replicate_relay.schemas`."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode
from pydantic_core import CoreSchema, core_schema

from replicate_relay.jobevents import JobEvent, JobEventAttributes
from replicate_relay.jobs import Job

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = "schemas"
DOCS = "docs/SCHEMAS.md"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class Contract:
    """One published schema: which model, under which name and major version."""

    name: str  # file stem and the middle of the $id
    version: int
    model: type[BaseModel]
    title: str

    @property
    def file_name(self) -> str:
        return f"{self.name}.v{self.version}.schema.json"

    @property
    def id(self) -> str:
        # A URN, not an https URL: the project owns no domain to serve the files from, and an URL
        # that resolves to nothing (or, later, to someone else's file) invites validators to fetch
        # it. The file itself is the schema; the URN only names it.
        return f"urn:replicate-relay:{self.name}:v{self.version}"


CONTRACTS = (
    Contract("job", 1, Job, "Relay job, v1, as the client and the API return it"),
    Contract("job-event", 1, JobEvent, "Relay job-events message data, v1"),
    Contract("job-event-attributes", 1, JobEventAttributes, "Relay job-events message attributes, v1"),
)


class _ContractJsonSchema(GenerateJsonSchema):
    """Pydantic's 2020-12 generator without the per-field titles it derives from field names
    ("Gs Uri"): they add nothing to the name beside them and clutter generated code."""

    def field_title_should_be_set(self, schema: CoreSchema | core_schema.ModelField) -> bool:
        return False


def schema(contract: Contract) -> dict[str, Any]:
    """The JSON Schema of `contract`: what the model writes (serialization mode), with $schema, $id and title."""
    mode: JsonSchemaMode = "serialization"
    generated = contract.model.model_json_schema(mode=mode, schema_generator=_ContractJsonSchema)
    generated = _tidy(generated)
    generated.pop("title", None)
    description = generated.pop("description", "")
    return {"$schema": DIALECT, "$id": contract.id, "title": contract.title, "description": description, **generated}


def _tidy(node: Any) -> Any:
    """Docstring line breaks joined, and defaults dropped: every field is always written, so a
    default would only suggest that a reader may find it missing."""
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if not isinstance(node, dict):
        return node
    tidied = {key: _tidy(value) for key, value in node.items()}
    if isinstance(tidied.get("description"), str):
        tidied["description"] = _paragraphs(tidied["description"])
    if isinstance(tidied.get("properties"), dict):
        for prop in tidied["properties"].values():
            prop.pop("default", None)
    return tidied


def _paragraphs(text: str) -> str:
    return "\n\n".join(" ".join(part.split()) for part in re.split(r"\n\s*\n", text.strip()))


def render_schema(contract: Contract) -> str:
    return json.dumps(schema(contract), indent=2, ensure_ascii=False) + "\n"


def to_json_form(document: Any) -> Any:
    """A Firestore document (as the Python client returns it) in the JSON form job.v1 describes:
    timestamps become RFC 3339 strings; everything else is JSON already."""
    if isinstance(document, datetime):
        return document.isoformat()
    if isinstance(document, Mapping):
        return {key: to_json_form(value) for key, value in document.items()}
    if isinstance(document, list | tuple):
        return [to_json_form(item) for item in document]
    return document


# docs/SCHEMAS.md: prose by hand, field tables generated between these markers.
_BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (?P<name>[\w-]+) -->\n).*?(<!-- END GENERATED: (?P=name) -->)", re.DOTALL)


def render_docs(current: str) -> str:
    """`current` with every generated block replaced by the field tables of the contract it names."""
    by_name = {contract.name: contract for contract in CONTRACTS}

    def replace(match: re.Match[str]) -> str:
        contract = by_name.get(match["name"])
        if contract is None:
            raise ValueError(f"{DOCS}: no contract named {match['name']!r}")
        return match.group(1) + field_tables(contract) + match.group(3)

    return _BLOCK.sub(replace, current)


def field_tables(contract: Contract) -> str:
    """Markdown tables of the contract's fields, then of each object type it refers to."""
    generated = schema(contract)
    defs: dict[str, Any] = generated.get("$defs", {})
    sections = [f"`{contract.file_name}` · `$id` `{contract.id}`\n\n" + _table(generated, defs)]
    for name, definition in defs.items():
        if "properties" in definition:  # enums are spelt out where they are used
            sections.append(f"**{name}**: {_cell(definition.get('description', ''))}\n\n" + _table(definition, defs))
    return "\n\n".join(sections) + "\n"


def _table(node: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    required = set(node.get("required", []))
    rows = ["| field | type | always present | description |", "| --- | --- | --- | --- |"]
    for name, prop in node.get("properties", {}).items():
        present = "yes" if name in required else "no"
        rows.append(f"| `{name}` | {_type(prop, defs)} | {present} | {_cell(prop.get('description', ''))} |")
    return "\n".join(rows)


def _type(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> str:  # noqa: PLR0911 - one return per shape
    if "anyOf" in prop:
        return " or ".join(_type(variant, defs) for variant in prop["anyOf"])
    if "$ref" in prop:
        name = str(prop["$ref"]).rsplit("/", 1)[-1]
        target = defs.get(name, {})
        return _type(target, defs) if "enum" in target else name
    if "enum" in prop:
        return " or ".join(f"`{json.dumps(value)}`" for value in prop["enum"])
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    kind = prop.get("type")
    if kind is None:
        return "any JSON value"
    if kind == "array":
        return f"array of {_type(prop.get('items', {}), defs)}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"object of {_type(prop['additionalProperties'], defs)}"
    if "format" in prop:
        return f"{kind} ({prop['format']})"
    return str(kind)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n\n", "<br><br>").replace("\n", " ")


def expected_files(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file and the content it must have."""
    files = {root / SCHEMA_DIR / contract.file_name: render_schema(contract) for contract in CONTRACTS}
    docs = root / DOCS
    files[docs] = render_docs(docs.read_text(encoding="utf-8"))
    return files


def stale(root: Path = ROOT) -> list[Path]:
    """The generated files that differ from what the models generate now (or are missing)."""
    return [
        path
        for path, content in expected_files(root).items()
        if not path.exists() or path.read_text(encoding="utf-8") != content
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replicate_relay.schemas", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a checked-in file differs from the models"
    )
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale()
        for path in outdated:
            print(f"{path.relative_to(ROOT)} is out of date: run python -m replicate_relay.schemas", file=sys.stderr)
        return 1 if outdated else 0
    for path, content in expected_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
