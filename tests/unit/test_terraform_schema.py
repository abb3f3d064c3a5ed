"""infra/checks/terraform_schema.py: Terraform held to hashicorp/google's schema, offline.

Every test reads the committed index; none downloads the wheel. The fixtures under
fixtures/terraform/ each plant one kind of mistake, except valid.tf.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from infra.checks import terraform_schema as ts

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "terraform"
TERRAFORM = ROOT / "infra" / "terraform"


@pytest.fixture(scope="module")
def index() -> ts.Index:
    return ts.load_index()


def _messages(name: str, index: ts.Index) -> list[str]:
    report = ts.check_files([FIXTURES / name], index, relative_to=ROOT)
    return [str(problem) for problem in report.problems]


# ---- the real module ----


def test_the_real_module_matches_the_schema_and_its_constraint_admits_the_index(index: ts.Index) -> None:
    files = sorted(TERRAFORM.glob("*.tf"))
    report = ts.check_files(files, index, relative_to=ROOT)
    assert [str(p) for p in report.problems] == []
    assert report.resources > 30
    assert report.data_sources >= 1
    assert ts.check_constraint(files, index, relative_to=ROOT) == []


def test_check_command_on_the_real_module_exits_0_with_an_ok_summary(
    index: ts.Index, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("terraform") is None:
        monkeypatch.setenv(ts.ALLOW_NO_TERRAFORM, "1")
    assert ts.main(["check", str(TERRAFORM)]) == 0
    out = capsys.readouterr().out
    assert f"checked against hashicorp/google {index.provider_version}: OK" in out


def test_check_command_exits_1_and_prints_a_line_per_problem_and_the_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert ts.main(["check", str(FIXTURES)]) == 1
    out = capsys.readouterr().out
    assert (
        'wrong_attribute.tf: google_storage_bucket.outputs: lifecycle_rule.condition: unknown attribute "agee"' in out
    )
    assert "9 resources, 4 data sources checked against hashicorp/google 6.50.0: 10 problems" in out.splitlines()


# ---- planted mistakes ----


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        pytest.param(
            "wrong_attribute.tf",
            ['google_storage_bucket.outputs: lifecycle_rule.condition: unknown attribute "agee"'],
            id="a misspelt attribute, with its address and block path",
        ),
        pytest.param(
            "missing_required.tf",
            [
                'google_pubsub_subscription.no_topic: missing required attribute "topic"',
                'google_cloud_run_v2_service.no_template: missing required block "template"',
            ],
            id="a missing required attribute or block",
        ),
        pytest.param(
            "block_vs_attribute.tf",
            [
                'google_pubsub_subscription.block_as_attribute: "retry_policy" is a block in the schema, set here as '
                "an attribute (write `retry_policy { … }`)",
                'google_pubsub_topic.attribute_as_block: "labels" is an attribute in the schema, written here as a '
                "block (write `labels = …`)",
            ],
            id="a block written as an attribute, an attribute as a block",
        ),
        pytest.param(
            "dynamic_wrong_attribute.tf",
            [
                'google_cloud_run_v2_service.service: template.containers.env: unknown attribute "valuee"',
                # args is a list attribute of containers: no dynamic block can make it
                'google_cloud_run_v2_service.service: template.containers: "args" is an attribute in the schema; '
                "a dynamic block can only make blocks",
            ],
            id="a dynamic block, checked through its content",
        ),
        pytest.param(
            "unknown_type.tf",
            [
                "google_pubsub_topik.typo: unknown resource type (not in hashicorp/google 6.50.0)",
                "data.google_pubsub_topics_everywhere.typo: unknown data source type (not in hashicorp/google 6.50.0)",
            ],
            id="unknown resource and data source types",
        ),
        pytest.param(
            # the resource needs a template block, the data source does not; the resource's name is
            # settable, the data source's is only computed
            "data_source.tf",
            ['data.google_project.current: unknown attribute "name"'],
            id="a data source, against the data source schema",
        ),
    ],
)
def test_each_planted_mistake_is_reported_with_file_address_and_block_path(
    fixture: str, expected: list[str], index: ts.Index
) -> None:
    assert _messages(fixture, index) == [f"tests/unit/fixtures/terraform/{fixture}: {line}" for line in expected]


def test_meta_arguments_dynamic_blocks_provisioners_and_the_provider_block_pass(index: ts.Index) -> None:
    report = ts.check_files([FIXTURES / "valid.tf"], index)
    assert report.problems == ()
    assert (report.resources, report.data_sources) == (2, 1)


def test_a_missing_required_attribute_inside_a_nested_block_is_named(index: ts.Index, tmp_path: Path) -> None:
    path = tmp_path / "main.tf"
    path.write_text('resource "google_pubsub_topic" "t" {\n  name = "t"\n  message_storage_policy {}\n}\n')
    (problem,) = ts.check_files([path], index).problems
    assert (problem.address, problem.path) == ("google_pubsub_topic.t", "message_storage_policy")
    assert problem.message == 'missing required attribute "allowed_persistence_regions"'


def test_an_unknown_provider_argument_fails(index: ts.Index, tmp_path: Path) -> None:
    path = tmp_path / "main.tf"
    path.write_text('provider "google" {\n  projectt = "p"\n}\n')
    (problem,) = ts.check_files([path], index).problems
    assert str(problem).endswith('provider.google: unknown attribute "projectt"')


# ---- the provider version constraint ----


@pytest.mark.parametrize(
    ("constraint", "admitted"),
    [
        ("~> 6.50", True),
        ("~> 6.50.0", True),
        ("~> 6.0", True),
        (">= 6.0, < 7.0", True),
        ("6.50.0", True),
        ("~> 5.0", False),
        ("~> 6.49.0", False),
        ("< 6.50", False),
        ("!= 6.50.0", False),
        ("~> 7", False),
    ],
)
def test_version_constraints_are_read_as_terraform_reads_them(constraint: str, admitted: bool) -> None:
    assert ts.admits(constraint, "6.50.0") is admitted


@pytest.mark.parametrize(
    ("constraint", "problem"),
    [
        ("~> 6.50", None),
        ("~> 6.0", "admits versions older than hashicorp/google 6.50.0"),
        ("~> 5.0", "does not admit hashicorp/google 6.50.0"),
        ("", "no version constraint"),
        ("about six", "cannot read version constraint"),
    ],
)
def test_the_constraint_must_admit_the_index_version_and_nothing_older(
    index: ts.Index, tmp_path: Path, constraint: str, problem: str | None
) -> None:
    version = f'\n      version = "{constraint}"' if constraint else ""
    (tmp_path / "versions.tf").write_text(
        f'terraform {{\n  required_providers {{\n    google = {{\n      source = "hashicorp/google"{version}\n'
        "    }\n  }\n}\n"
    )
    problems = ts.check_constraint(sorted(tmp_path.glob("*.tf")), index)
    assert [p.message for p in problems if problem is None or problem not in p.message] == []
    assert len(problems) == (0 if problem is None else 1)


def test_a_module_without_a_google_constraint_fails(index: ts.Index, tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text('resource "google_pubsub_topic" "t" {\n  name = "t"\n}\n')
    (problem,) = ts.check_constraint([tmp_path / "main.tf"], index)
    assert problem.message == "no version constraint for hashicorp/google"


# ---- terraform fmt ----


def test_without_terraform_fmt_is_reported_unchecked_and_fails_unless_opted_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(ts.ALLOW_NO_TERRAFORM, raising=False)
    assert ts.check_fmt(tmp_path) is False
    assert "terraform fmt was NOT checked" in capsys.readouterr().out
    monkeypatch.setenv(ts.ALLOW_NO_TERRAFORM, "1")
    assert ts.check_fmt(tmp_path) is True
    assert f"NOT checked: no terraform on PATH (allowed by {ts.ALLOW_NO_TERRAFORM}=1)" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
def test_unformatted_terraform_fails_the_fmt_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "main.tf").write_text('resource "google_pubsub_topic" "t" {\n  name="t"\n}\n')
    assert ts.check_fmt(tmp_path) is False
    assert "not formatted" in capsys.readouterr().out


# ---- the index ----


def test_the_committed_index_records_its_wheel_and_provider_version_and_is_small() -> None:
    with gzip.open(ts.INDEX_PATH, "rt") as file:
        raw = json.load(file)
    assert raw["wheel"]["project"] == ts.WHEEL_PROJECT
    assert raw["wheel"]["version"] == ts.WHEEL_VERSION
    assert raw["wheel"]["file"] == f"cdktf_cdktf_provider_google-{ts.WHEEL_VERSION}-py3-none-any.whl"
    assert len(raw["wheel"]["sha256"]) == 64
    assert raw["provider_version"] == "6.50.0"
    assert len(raw["resources"]) > 1000
    assert len(raw["data_sources"]) > 300
    assert ts.INDEX_PATH.stat().st_size < 250_000


_GENERATED_JS = """\
function fooBarSpecToHclTerraform(struct) {
    const attrs = {
        layer_7_config: {
            value: cdktf.stringToHclTerraform(struct.layer7Config),
            isBlock: false,
            type: "simple",
            storageClassType: "string",
        },
    };
    return attrs;
}
class FooBar extends cdktf.TerraformResource {
    constructor(scope, id, config) {
        this._build = new FooBarSpecOutputReference(this, "build");
        this._name = config.name;
        this._build.internalValue = config.buildAttribute;
    }
    synthesizeHclAttributes() {
        const attrs = {
            name: {
                value: cdktf.stringToHclTerraform(this._name),
                isBlock: false,
                type: "simple",
                storageClassType: "string",
            },
            build: {
                value: (0, index_structs_1.fooBarSpecToHclTerraform)(this._build.internalValue),
                isBlock: true,
                type: "list",
                storageClassType: "FooBarSpecList",
            },
        };
        return attrs;
    }
}
FooBar[_a] = { fqn: "@cdktf/provider-google.fooBar.FooBar", version: "16.12.1" };
FooBar.tfResourceType = "google_foo_bar";
"""


def test_the_index_takes_names_from_the_generated_javascript_and_requiredness_from_jsii() -> None:
    functions, construct = ts.parse_module_js(_GENERATED_JS, "foo-bar/index.js")
    assert construct == ("resource", "google_foo_bar", "@cdktf/provider-google.fooBar.FooBar")
    spec = "@cdktf/provider-google.fooBar.FooBarSpec"
    types = {
        "@cdktf/provider-google.fooBar.FooBarConfig": {
            "properties": [
                {"name": "name", "type": {"primitive": "string"}},
                {"name": "buildAttribute", "optional": True, "type": {"collection": {"elementtype": {"fqn": spec}}}},
            ]
        },
        spec: {"properties": [{"name": "layer7Config", "type": {"primitive": "string"}}]},
    }
    node = ts.schema_node("@cdktf/provider-google.fooBar.FooBarConfig", "", types, functions)
    assert node == {
        "attributes": {"name": True},
        "blocks": {"build": {"required": False, "attributes": {"layer_7_config": True}}},
    }


def test_the_check_leaves_out_hidden_directories_such_as_terraform_inits_copies(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text("")
    (tmp_path / "modules" / "x").mkdir(parents=True)
    (tmp_path / "modules" / "x" / "x.tf").write_text("")
    (tmp_path / ".terraform" / "modules").mkdir(parents=True)
    (tmp_path / ".terraform" / "modules" / "copy.tf").write_text("")
    assert ts.terraform_files(tmp_path) == [tmp_path / "main.tf", tmp_path / "modules" / "x" / "x.tf"]
