"""Check infra/terraform against the schema of the google provider version that versions.tf pins.

Why: `terraform validate` needs the provider binary, which cannot be downloaded here, so without
this a misspelt attribute, a block written as an attribute or a missing required argument would
first show at `terraform plan` against a real project. The schema comes instead from the prebuilt
CDK-for-Terraform bindings on PyPI, which are generated from the provider's own schema:
cdktf-cdktf-provider-google 16.12.1 (WHEEL_VERSION) = hashicorp/google 6.50.0, the last 6.x.

`check [DIR]` (default infra/terraform; `make check-terraform`, part of `make test`) works offline
from the committed index, google-provider.schema.json.gz next to this file, and verifies that:
- every resource and data source type exists in the provider (data sources against their own schema);
- every attribute and nested block that is set exists, as an attribute where the schema has an
  attribute and as a block where it has a block; `dynamic "x"` is checked as block x through its
  `content`; meta-arguments (count, for_each, depends_on, provider, lifecycle, ...) are allowed;
- every required attribute and every required nested block (min items > 0) is set;
- the `provider "google"` block's arguments exist;
- the google version constraint in the `terraform` block admits the index's version and no older
  minor release (an older one may lack what was checked: pin `~> 6.50`);
- then `terraform fmt -check -recursive -diff DIR`; without terraform on PATH this fails, unless
  RELAY_ALLOW_NO_TERRAFORM=1 says to skip it (it then says so).
Not checked: values and their types, conflicting or exactly-one-of arguments, computed-only
attributes (they can be read, never set), resources of other providers (reported as unknown).

`index` (`make terraform-schema`) regenerates the index: pip downloads the pinned wheel into
.cache/terraform-schema/ (git-ignored; 49 MB), reads the jsii assembly (which marks every field
optional or required) and the generated JavaScript (which has the exact snake_case names and tells
blocks from attributes) from its tarball without installing it, and records the wheel's name,
version, sha256 and the provider version the bindings were generated from. To move to another
provider version: change WHEEL_VERSION, run `make terraform-schema`, then update versions.tf.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2

WHEEL_PROJECT = "cdktf-cdktf-provider-google"
WHEEL_VERSION = "16.12.1"  # the one pin: the provider version is read from the wheel's README
PROVIDER_SOURCE = "hashicorp/google"
INDEX_FORMAT = 1

ROOT = Path(__file__).resolve().parents[2]
INDEX_PATH = Path(__file__).resolve().with_name("google-provider.schema.json.gz")
CACHE_DIR = ROOT / ".cache" / "terraform-schema"
DEFAULT_DIR = ROOT / "infra" / "terraform"
ALLOW_NO_TERRAFORM = "RELAY_ALLOW_NO_TERRAFORM"

# Terraform's own arguments, which no provider schema lists (Terraform reserves these names).
RESOURCE_META = frozenset({"count", "for_each", "depends_on", "provider", "lifecycle", "provisioner", "connection"})
DATA_META = frozenset({"count", "for_each", "depends_on", "provider", "lifecycle"})
PROVIDER_META = frozenset({"alias", "version"})
DYNAMIC_ARGUMENTS = frozenset({"for_each", "iterator", "labels", "content"})
_PARSE_OPTIONS = hcl2.SerializationOptions(with_comments=False, explicit_blocks=True, strip_string_quotes=True)
_IS_BLOCK = "__is_block__"


# ---- the schema index ----


@dataclass(frozen=True)
class Block:
    """What may be set in a body: attributes (name → required) and nested blocks. `required`: as a
    nested block, the schema's min items is above zero."""

    attributes: Mapping[str, bool]
    blocks: Mapping[str, Block]
    required: bool = False


@dataclass(frozen=True)
class Index:
    """The committed index: the provider schema and where it came from.

    Resource and data source schemas stay JSON until asked for: a check needs a few dozen of
    the ~1,500 types, so converting them all would only cost time.
    """

    provider_version: str
    wheel: Mapping[str, str]
    provider: Block
    resources: Mapping[str, Any]
    data_sources: Mapping[str, Any]

    @property
    def name(self) -> str:
        return f"{PROVIDER_SOURCE} {self.provider_version}"

    def resource(self, rtype: str) -> Block | None:
        node = self.resources.get(rtype)
        return None if node is None else block_from_json(node)

    def data_source(self, dtype: str) -> Block | None:
        node = self.data_sources.get(dtype)
        return None if node is None else block_from_json(node)


def block_from_json(node: Mapping[str, Any]) -> Block:
    """The index's JSON node ({"attributes": {name: required}, "blocks": {name: node + "required"}})."""
    return Block(
        attributes={name: bool(req) for name, req in node.get("attributes", {}).items()},
        blocks={name: block_from_json(nested) for name, nested in node.get("blocks", {}).items()},
        required=bool(node.get("required")),
    )


def load_index(path: Path = INDEX_PATH) -> Index:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        raw = json.load(file)
    if raw.get("format") != INDEX_FORMAT or raw.get("source") != PROVIDER_SOURCE:
        raise ValueError(f"{path}: not a format-{INDEX_FORMAT} index of {PROVIDER_SOURCE}; run `make terraform-schema`")
    if raw["wheel"]["version"] != WHEEL_VERSION:
        raise ValueError(
            f"{path} was made from wheel {raw['wheel']['version']}, not {WHEEL_VERSION}: run `make terraform-schema`"
        )
    return Index(
        provider_version=raw["provider_version"],
        wheel=raw["wheel"],
        provider=block_from_json(raw["provider"]),
        resources=raw["resources"],
        data_sources=raw["data_sources"],
    )


# ---- building the index from the wheel ----


@dataclass(frozen=True)
class JsField:
    """One entry of a generated `...ToHclTerraform` attrs object: the Terraform name of a jsii property."""

    name: str
    is_block: bool
    function: str | None  # the nested struct's `...ToHclTerraform` function, when the value is a struct


_HCL_FUNCTION = re.compile(r"^function (\w+)ToHclTerraform\(struct\) \{$", re.MULTILINE)
_SYNTHESIZE = "synthesizeHclAttributes() {"
_FUNCTION_END = "\n}\n"  # top-level functions end at column 0, methods at column 4
_METHOD_END = "\n    }\n"
_ENTRY = re.compile(
    r"^\s+(\w+): \{\n\s+value: (.+),\n\s+isBlock: (true|false),\n"
    r"\s+type: \"\w+\",\n\s+storageClassType: \"\w+\",\n\s+\},$",
    re.MULTILINE,
)
_SOURCE = re.compile(r"(?:this\._|struct\.)(\w+)(?:\.internalValue)?\)")
_CONFIG_ASSIGNMENT = re.compile(r"^\s+this\._(\w+)(?:\.internalValue)? = config\.(\w+);$", re.MULTILINE)
# `fooToHclTerraform(…)`, or `(0, index_structs_1.fooToHclTerraform)(…)` where big modules split their structs
# into files of their own; never cdktf's own `cdktf.stringToHclTerraform`.
_STRUCT_FUNCTION = re.compile(r"(?<![\w.])(?:\w+_\d+\.)?([a-z]\w*)ToHclTerraform\b")
_CLASS = re.compile(r"^class (\w+) extends cdktf\.(TerraformResource|TerraformDataSource|TerraformProvider) \{$", re.M)
_RTTI = re.compile(r"^(\w+)\[_\w+\] = \{ fqn: \"([^\"]+)\"", re.MULTILINE)
_TF_TYPE = re.compile(r"^(\w+)\.tfResourceType = \"(\w+)\";$", re.MULTILINE)
_README_VERSION = re.compile(
    r"^# CDKTF prebuilt bindings for hashicorp/google provider version (\d+\.\d+\.\d+)\s*$", re.M
)
_JSII_PREFIX = "@cdktf/provider-google."


def _fields(attrs: str, where: str) -> dict[str, JsField]:
    """camelCase jsii property → its field, from one attrs object of the generated JavaScript."""
    fields: dict[str, JsField] = {}
    for match in _ENTRY.finditer(attrs):
        name, value, is_block = match.group(1), match.group(2), match.group(3) == "true"
        sources = _SOURCE.findall(value)
        if not sources:
            raise ValueError(f"{where}: no property in the value of {name}: {value}")
        functions = _STRUCT_FUNCTION.findall(value)
        fields[sources[-1]] = JsField(name=name, is_block=is_block, function=functions[0] if functions else None)
    return fields


def parse_module_js(js: str, where: str) -> tuple[dict[str, dict[str, JsField]], tuple[str, str, str] | None]:
    """The attrs objects of one generated module, by struct function ("" for the class), and its
    class: (kind, Terraform type, jsii fqn of the class) when it is a resource, data source or provider."""
    functions: dict[str, dict[str, JsField]] = {}
    for match in _HCL_FUNCTION.finditer(js):
        end = js.index(_FUNCTION_END, match.end())
        functions[match.group(1)] = _fields(js[match.end() : end], f"{where}:{match.group(1)}")
    start = js.find(_SYNTHESIZE)
    classes = _CLASS.findall(js)
    if start < 0 or not classes:
        return functions, None
    by_field = _fields(js[start : js.index(_METHOD_END, start)], f"{where}:synthesizeHclAttributes")
    # The class keeps a property in a field named after it, except where the name clashes with one
    # of the construct's own (build → buildAttribute): the constructor's assignments say which.
    config = dict(_CONFIG_ASSIGNMENT.findall(js))
    functions[""] = {config.get(name, name): field for name, field in by_field.items()}
    (class_name, base), *others = classes
    if others:
        raise ValueError(f"{where}: more than one construct class: {classes}")
    tf_types = dict(_TF_TYPE.findall(js))
    fqns = dict(_RTTI.findall(js))
    kind = {"TerraformResource": "resource", "TerraformDataSource": "data", "TerraformProvider": "provider"}[base]
    return functions, (kind, tf_types[class_name], fqns[class_name])


def _struct_fqns(jsii_type: Mapping[str, Any]) -> set[str]:
    """The provider's structs a jsii type reference names (through unions and collections)."""
    if "fqn" in jsii_type:
        return {jsii_type["fqn"]} if jsii_type["fqn"].startswith(_JSII_PREFIX) else set()
    if "union" in jsii_type:
        return set().union(*(_struct_fqns(t) for t in jsii_type["union"]["types"]))
    if "collection" in jsii_type:
        return _struct_fqns(jsii_type["collection"]["elementtype"])
    return set()


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def schema_node(
    fqn: str, function: str, types: Mapping[str, Any], functions: Mapping[str, Mapping[str, JsField]]
) -> dict[str, Any]:
    """The index node of a jsii struct: optional/required from jsii, names and blocks from the JavaScript.

    Both must list the same properties, or the generator changed and this reader is wrong.
    """
    properties = {p["name"]: p for p in types[fqn].get("properties", [])}
    fields = functions[function]
    if set(properties) != set(fields):
        raise ValueError(f"{fqn}: jsii and JavaScript disagree: {sorted(set(properties) ^ set(fields))}")
    attributes: dict[str, bool] = {}
    blocks: dict[str, Any] = {}
    for camel, prop in sorted(properties.items(), key=lambda item: fields[item[0]].name):
        field = fields[camel]
        required = not prop.get("optional", False)
        if not field.is_block:
            attributes[field.name] = required
            continue
        nested = _struct_fqns(prop["type"])
        if len(nested) != 1:
            raise ValueError(f"{fqn}.{camel}: a block whose struct is not one type: {nested}")
        nested_fqn = nested.pop()
        nested_function = _lower_first(nested_fqn.rsplit(".", 1)[1])
        if field.function != nested_function:
            raise ValueError(f"{fqn}.{camel}: the JavaScript converts it with {field.function}, not {nested_function}")
        blocks[field.name] = {"required": required, **schema_node(nested_fqn, nested_function, types, functions)}
    node: dict[str, Any] = {}
    if attributes:
        node["attributes"] = attributes
    if blocks:
        node["blocks"] = blocks
    return node


def read_wheel(wheel: Path) -> dict[str, Any]:
    """The index, from the wheel's jsii tarball (read, never installed: it needs node to run)."""
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [n for n in archive.namelist() if n.endswith(".jsii.tgz")]
        tarball = archive.read(member)
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        readme = _read(tar, "package/README.md")
        found = _README_VERSION.search(readme)
        if not found:
            raise ValueError(f"{wheel.name}: the README does not say which provider version it was generated from")
        types: Mapping[str, Any] = json.loads(_read(tar, "package/.jsii"))["types"]
        index: dict[str, Any] = {"provider": None, "resources": {}, "data_sources": {}}
        for module, members in _modules(tar).items():
            functions: dict[str, dict[str, JsField]] = {}
            constructs = []
            for name in members:
                module_functions, construct = parse_module_js(_read(tar, name), name)
                functions.update(module_functions)
                constructs.extend([construct] if construct else [])
            if not constructs:
                continue
            if len(constructs) > 1:
                raise ValueError(f"{module}: more than one construct: {constructs}")
            kind, tf_type, class_fqn = constructs[0]
            node = schema_node(class_fqn + "Config", "", types, functions)
            if kind == "provider":
                index["provider"] = node
            else:
                section = index["resources" if kind == "resource" else "data_sources"]
                if tf_type in section:
                    raise ValueError(f"{module}: {kind} {tf_type} is defined twice")
                section[tf_type] = node
    if index["provider"] is None:
        raise ValueError(f"{wheel.name}: no provider configuration found")
    return {
        "format": INDEX_FORMAT,
        "source": PROVIDER_SOURCE,
        "provider_version": found.group(1),
        "wheel": {
            "file": wheel.name,
            "project": WHEEL_PROJECT,
            "version": WHEEL_VERSION,
            "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        },
        "provider": index["provider"],
        "resources": dict(sorted(index["resources"].items())),
        "data_sources": dict(sorted(index["data_sources"].items())),
    }


def _modules(tar: tarfile.TarFile) -> dict[str, list[str]]:
    """The JavaScript files of each generated module (package/lib/<module>/**.js), by module."""
    modules: dict[str, list[str]] = {}
    for name in tar.getnames():
        parts = name.split("/")
        if len(parts) > 3 and parts[:2] == ["package", "lib"] and name.endswith(".js"):
            modules.setdefault(parts[2], []).append(name)
    return modules


def _read(tar: tarfile.TarFile, name: str) -> str:
    file = tar.extractfile(name)
    if file is None:
        raise ValueError(f"{name} is not a file in the tarball")
    return file.read().decode("utf-8")


def download_wheel(cache: Path) -> Path:
    """The pinned wheel, downloaded by pip into the cache unless it is there already."""
    cache.mkdir(parents=True, exist_ok=True)
    requirement = f"{WHEEL_PROJECT}=={WHEEL_VERSION}"
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(cache)]
    subprocess.run([*command, requirement], check=True)  # noqa: S603 (argv built here, never shell-parsed)
    name = f"{WHEEL_PROJECT.replace('-', '_')}-{WHEEL_VERSION}-py3-none-any.whl"
    return cache / name


def write_index(index: Mapping[str, Any], path: Path) -> None:
    """Compact, sorted and without a timestamp, so regenerating from the same wheel changes nothing."""
    data = json.dumps(index, separators=(",", ":")).encode("utf-8")
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as out:
        out.write(data)


# ---- checking Terraform files ----


@dataclass(frozen=True)
class Problem:
    """One thing Terraform would reject, located by file, address and the path of nested blocks."""

    file: str
    address: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.address}: {self.path}" if self.path else self.address
        return f"{self.file}: {where}: {self.message}"


@dataclass(frozen=True)
class Report:
    """What a check found, and how much it looked at (for the summary line)."""

    problems: tuple[Problem, ...]
    resources: int
    data_sources: int


def _unquote(key: str) -> str:
    return key.strip('"')


def _is_block_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and v.get(_IS_BLOCK) for v in value)


def _is_labelled_block_list(value: object) -> bool:
    """`dynamic "x" { … }` parses as [{"x": {…, "__is_block__": True}}]: the label wraps the block."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, dict) and all(_is_block_list([b]) for b in v.values()) for v in value)
    )


def _blocks(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def check_body(
    body: Mapping[str, Any], schema: Block, path: str = "", meta: frozenset[str] = frozenset()
) -> Iterator[tuple[str, str]]:
    """(path, message) for every field of a body the schema does not allow, and every required one missing."""
    present: set[str] = set()
    for key, value in body.items():
        name = _unquote(key)
        if name.startswith("__") or name in meta:
            continue
        if name == "dynamic" and "dynamic" not in schema.blocks and _is_labelled_block_list(value):
            for dynamic in _blocks(value):
                for label, dynamic_body in dynamic.items():
                    if label != _IS_BLOCK:
                        present.add(_unquote(label))
                        yield from _check_dynamic(_unquote(label), dynamic_body, schema, path)
            continue
        present.add(name)
        if _is_block_list(value):
            yield from _check_blocks(name, _blocks(value), schema, path)
        elif name in schema.blocks:
            yield path, f'"{name}" is a block in the schema, set here as an attribute (write `{name} {{ … }}`)'
        elif name not in schema.attributes:
            yield path, f'unknown attribute "{name}"'
    yield from (
        (path, f'missing required attribute "{n}"') for n, r in schema.attributes.items() if r and n not in present
    )
    yield from (
        (path, f'missing required block "{n}"') for n, b in schema.blocks.items() if b.required and n not in present
    )


def _check_blocks(
    name: str, bodies: Sequence[Mapping[str, Any]], schema: Block, path: str
) -> Iterator[tuple[str, str]]:
    if name in schema.attributes:
        yield path, f'"{name}" is an attribute in the schema, written here as a block (write `{name} = …`)'
        return
    nested = schema.blocks.get(name)
    if nested is None:
        yield path, f'unknown block "{name}"'
        return
    for i, body in enumerate(bodies):
        yield from check_body(body, nested, _join(path, name if len(bodies) == 1 else f"{name}[{i}]"))


def _check_dynamic(label: str, body: object, schema: Block, path: str) -> Iterator[tuple[str, str]]:
    """A `dynamic "label"` makes label blocks: its content is checked as one."""
    where = _join(path, f'dynamic "{label}"')
    if not isinstance(body, dict):
        yield where, "not a block"
        return
    for key in body:
        if _unquote(key) not in DYNAMIC_ARGUMENTS and key != _IS_BLOCK:
            yield where, f'unknown argument "{_unquote(key)}" of a dynamic block'
    contents = _blocks(body.get("content"))
    if "for_each" not in body or not contents:
        yield where, "a dynamic block needs for_each and a content block"
    if label in schema.attributes:
        yield path, f'"{label}" is an attribute in the schema; a dynamic block can only make blocks'
    elif label not in schema.blocks:
        yield path, f'unknown block "{label}" (dynamic)'
    else:
        for content in contents:
            yield from check_body(content, schema.blocks[label], _join(path, label))


def _labelled(document: Mapping[str, Any], kind: str) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(type, name, body) of every `kind "type" "name" { … }` block of a parsed file."""
    for entry in _blocks(document.get(kind)):
        for rtype, named in entry.items():
            if rtype == _IS_BLOCK or not isinstance(named, dict):
                continue
            for name, body in named.items():
                if name != _IS_BLOCK and isinstance(body, dict):
                    yield _unquote(rtype), _unquote(name), body


def parse_file(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as file:
        document: dict[str, Any] = hcl2.load(file, serialization_options=_PARSE_OPTIONS)
    return document


def check_files(files: Iterable[Path], index: Index, relative_to: Path | None = None) -> Report:
    """Every resource, data source and google provider block of the files, against the index."""
    problems: list[Problem] = []
    resources = data_sources = 0
    for path in files:
        check = _FileCheck(_shown(path, relative_to), index)
        try:
            document = parse_file(path)
        except Exception as error:  # python-hcl2 raises lark's many error types
            problems.append(Problem(check.file, "(file)", "", f"cannot parse: {error}"))
            continue
        for rtype, name, body in _labelled(document, "resource"):
            resources += 1
            problems.extend(check.construct(f"{rtype}.{name}", body, index.resource(rtype), RESOURCE_META))
        for dtype, name, body in _labelled(document, "data"):
            data_sources += 1
            problems.extend(check.construct(f"data.{dtype}.{name}", body, index.data_source(dtype), DATA_META))
        for entry in _blocks(document.get("provider")):
            for label, body in entry.items():
                if _unquote(label) == "google" and isinstance(body, dict):
                    problems.extend(check.construct("provider.google", body, index.provider, PROVIDER_META))
    return Report(problems=tuple(problems), resources=resources, data_sources=data_sources)


@dataclass(frozen=True)
class _FileCheck:
    """Turns what check_body finds in one file's constructs into located problems."""

    file: str
    index: Index

    def construct(
        self, address: str, body: Mapping[str, Any], schema: Block | None, meta: frozenset[str]
    ) -> Iterator[Problem]:
        if schema is None:
            kind = "data source" if address.startswith("data.") else "resource"
            yield Problem(self.file, address, "", f"unknown {kind} type (not in {self.index.name})")
            return
        for path, message in check_body(body, schema, meta=meta):
            yield Problem(self.file, address, path, message)


def _shown(path: Path, relative_to: Path | None) -> str:
    if relative_to is not None and path.resolve().is_relative_to(relative_to):
        return str(path.resolve().relative_to(relative_to))
    return str(path)


# ---- the provider version constraint ----

_CONSTRAINT = re.compile(r"^(=|!=|>=|<=|>|<|~>)?\s*v?(\d+(?:\.\d+){0,2})$")


def _version(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(".")]
    parts.extend([0] * (3 - len(parts)))
    return parts[0], parts[1], parts[2]


def _bounds(part: str) -> tuple[str, tuple[int, int, int], tuple[int, int, int] | None]:
    """(operator, version, upper bound of ~>) of one constraint, as Terraform reads it."""
    match = _CONSTRAINT.match(part.strip())
    if not match:
        raise ValueError(f'cannot read version constraint "{part.strip()}"')
    operator, text = match.group(1) or "=", match.group(2)
    if operator != "~>":
        return operator, _version(text), None
    parts = [int(p) for p in text.split(".")]
    upper = [parts[0] + 1] if len(parts) == 1 else [*parts[:-2], parts[-2] + 1]
    return operator, _version(text), _version(".".join(map(str, upper)))


def admits(constraint: str, version: str) -> bool:
    """Whether a Terraform version constraint (e.g. "~> 6.50", ">= 6.0, < 7") allows the version."""
    have = _version(version)
    for part in constraint.split(","):
        operator, want, upper = _bounds(part)
        ok = {
            "=": have == want,
            "!=": have != want,
            ">": have > want,
            ">=": have >= want,
            "<": have < want,
            "<=": have <= want,
            "~>": have >= want and upper is not None and have < upper,
        }[operator]
        if not ok:
            return False
    return True


def oldest_admitted(constraint: str) -> tuple[int, int, int]:
    """The lowest version a constraint names as a minimum (0.0.0 when it has none)."""
    lows = [want for operator, want, _ in map(_bounds, constraint.split(",")) if operator in {"=", ">", ">=", "~>"}]
    return max(lows, default=(0, 0, 0))


def google_constraints(files: Iterable[Path], relative_to: Path | None = None) -> list[tuple[str, str]]:
    """(file, version constraint) of every required_providers entry whose source is hashicorp/google."""
    found: list[tuple[str, str]] = []
    for path in files:
        try:
            document = parse_file(path)
        except Exception:  # noqa: S112 (check_files reports the file)
            continue
        for terraform in _blocks(document.get("terraform")):
            for required in _blocks(terraform.get("required_providers")):
                for name, spec in required.items():
                    if name == _IS_BLOCK or not isinstance(spec, dict):
                        continue
                    source = str(spec.get("source", f"hashicorp/{_unquote(name)}")).lower()
                    if source.removeprefix("registry.terraform.io/") == PROVIDER_SOURCE:
                        found.append((_shown(path, relative_to), str(spec.get("version", ""))))
    return found


def constraint_problem(constraint: str, index: Index) -> str | None:
    """Why a google version constraint does not fit the index: it must admit the index's version
    and no older minor release, which may lack attributes the check accepted."""
    have = _version(index.provider_version)
    try:
        if not constraint:
            return f"no version constraint (the index is {index.name})"
        if not admits(constraint, index.provider_version):
            return f'"{constraint}" does not admit {index.name}'
        if oldest_admitted(constraint)[:2] < have[:2]:
            pin = f"~> {have[0]}.{have[1]}"
            return (
                f'"{constraint}" admits versions older than {index.name}, which may lack what was checked (pin "{pin}")'
            )
    except ValueError as error:
        return str(error)
    return None


def check_constraint(files: Iterable[Path], index: Index, relative_to: Path | None = None) -> list[Problem]:
    """The module's google version constraints, each against the index's version."""
    address = "terraform.required_providers.google"
    found = google_constraints(files, relative_to)
    if not found:
        return [Problem("(module)", address, "", f"no version constraint for {PROVIDER_SOURCE}")]
    problems = [(file, constraint_problem(constraint, index)) for file, constraint in found]
    return [Problem(file, address, "", message) for file, message in problems if message]


# ---- terraform fmt ----


def check_fmt(directory: Path) -> bool:
    """`terraform fmt -check`; without terraform this fails unless RELAY_ALLOW_NO_TERRAFORM=1 opts out."""
    terraform = shutil.which("terraform")
    if terraform is None:
        allowed = os.environ.get(ALLOW_NO_TERRAFORM) == "1"
        reason = (
            f"allowed by {ALLOW_NO_TERRAFORM}=1" if allowed else f"install it, or set {ALLOW_NO_TERRAFORM}=1 to skip"
        )
        print(f"terraform fmt was NOT checked: no terraform on PATH ({reason})")
        return allowed
    env = {**os.environ, "TF_CLI_CONFIG_FILE": os.devnull}  # no warning about a missing ~/.terraformrc
    command = [terraform, "fmt", "-check", "-recursive", "-diff", str(directory)]
    result = subprocess.run(command, env=env, check=False)  # noqa: S603 (argv built here, never shell-parsed)
    if result.returncode != 0:
        print(f"terraform fmt: not formatted (exit {result.returncode}); run `terraform fmt -recursive {directory}`")
        return False
    print("terraform fmt: OK")
    return True


# ---- command line ----


def run_check(directory: Path, index_path: Path = INDEX_PATH) -> int:
    index = load_index(index_path)
    files = terraform_files(directory)
    shown_from = Path.cwd().resolve()
    report = check_files(files, index, relative_to=shown_from)
    problems = [*report.problems, *check_constraint(files, index, relative_to=shown_from)]
    for problem in problems:
        print(problem)
    outcome = "OK" if not problems else _count(len(problems), "problem")
    counted = f"{_count(report.resources, 'resource')}, {_count(report.data_sources, 'data source')}"
    print(f"{counted} checked against {index.name}: {outcome}")
    fmt_ok = check_fmt(directory)
    return 0 if not problems and fmt_ok else 1


def terraform_files(directory: Path) -> list[Path]:
    """The .tf files under a directory, leaving out hidden ones such as .terraform/ (`terraform init`'s copies)."""
    found = directory.rglob("*.tf")
    return sorted(path for path in found if not any(part.startswith(".") for part in path.relative_to(directory).parts))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def run_index(cache: Path, output: Path) -> int:
    wheel = download_wheel(cache)
    index = read_wheel(wheel)
    if output.exists():
        # PyPI never changes a released file: another hash for the same version is not the same wheel.
        with gzip.open(output, "rt", encoding="utf-8") as file:
            previous = json.load(file)["wheel"]
        if previous["version"] == WHEEL_VERSION and previous["sha256"] != index["wheel"]["sha256"]:
            print(f"{wheel}: sha256 {index['wheel']['sha256']}, but {output} recorded {previous['sha256']}")
            return 1
    write_index(index, output)
    print(f"{output}: {PROVIDER_SOURCE} {index['provider_version']}, {output.stat().st_size} bytes")
    print(f"  from {wheel.name}, sha256 {index['wheel']['sha256']}")
    print(f"  {len(index['resources'])} resources, {len(index['data_sources'])} data sources")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.checks.terraform_schema", description=(__doc__ or "").split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check .tf files against the committed index, then terraform fmt")
    check.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    check.add_argument("--index", type=Path, default=INDEX_PATH, help=argparse.SUPPRESS)
    index = commands.add_parser("index", help=f"download {WHEEL_PROJECT}=={WHEEL_VERSION} and rewrite the index")
    index.add_argument("--cache", type=Path, default=CACHE_DIR)
    index.add_argument("--output", type=Path, default=INDEX_PATH)
    args = parser.parse_args(argv)
    if args.command == "index":
        return run_index(args.cache, args.output)
    if not args.directory.is_dir():
        parser.error(f"{args.directory} is not a directory")
    return run_check(args.directory, args.index)


if __name__ == "__main__":
    sys.exit(main())
