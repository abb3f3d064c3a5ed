"""replicate_relay.devstack.terraform_env: each Cloud Run service's environment, evaluated from the Terraform files.

Against infra/terraform itself (what the image test gives each container), against the small module
in fixtures/terraform_env (each kind of mistake Terraform would reject is named), and expression by
expression.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from replicate_relay.devstack.terraform_env import ServiceEnv, TerraformEvalError, local_computed, service_environments

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "infra" / "terraform"
TOPOLOGY = yaml.safe_load((ROOT / "infra" / "topology.yaml").read_text())
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "terraform_env"

PROJECT = "local-project"
# The computed attributes the services' env needs, as the image test and bench/image.py give them:
# the push identity's e-mail (handlers) and the project number (the receiver's deterministic URL,
# the API's RELAY_WEBHOOK_URL). Every test of the real configuration below fails if one is missing.
COMPUTED = local_computed(PROJECT)
PUSH_ACCOUNT = COMPUTED["google_service_account.push.email"]
PROJECT_NUMBER = COMPUTED["data.google_project.this.number"]

EVENTS_TOPIC = next(s["topic"] for s in TOPOLOGY["subscriptions"])
JOB_EVENTS_TOPIC = next(t for t in TOPOLOGY["topics"] if t != EVENTS_TOPIC)
BUCKET = f"{PROJECT}-{TOPOLOGY['bucket']['name_suffix']}"

COMMON = {
    "RELAY_PROJECT",
    "RELAY_LOG_LEVEL",
    "FUNCTION_SIGNATURE_TYPE",
    "RELAY_GCP_TELEMETRY",
    "FUNCTION_SOURCE",
    "FUNCTION_TARGET",
    "FUNCTION_USE_ASGI",
    "OTEL_SERVICE_NAME",
    "RELAY_TELEMETRY_FLUSH_EACH_REQUEST",
}
HANDLER = {"RELAY_BUCKET", "RELAY_EVENTS_TOPIC", "RELAY_JOB_EVENTS_TOPIC", "RELAY_EVENT_RETENTION_DAYS"}


def _real(**variables: object) -> dict[str, ServiceEnv]:
    return service_environments(TERRAFORM, variables={"project_id": PROJECT, **variables}, resources=COMPUTED)


# ---- infra/terraform ----


def test_every_service_of_run_tf_gets_its_environment() -> None:
    envs = _real()
    assert set(envs) == {"receiver", "reconciler", "status-page", "job-status", "archive-outputs", "api"}
    for name, env in envs.items():
        assert env.name == name
        assert set(env.values) >= COMMON
        assert env.values["OTEL_SERVICE_NAME"] == name
        assert env.values["RELAY_PROJECT"] == PROJECT
        assert env.values["RELAY_LOG_LEVEL"] == "INFO"
        assert env.values["FUNCTION_USE_ASGI"] == ("true" if name == "receiver" else "false")
        assert all(isinstance(value, str) for value in [*env.values.values(), *env.secrets.values()])


def test_the_receiver_gets_exactly_its_variables_and_the_webhook_secret() -> None:
    receiver = _real(webhook_secret_id="webhook-secret-under-test")["receiver"]
    assert set(receiver.values) == COMMON | {"RELAY_EVENTS_TOPIC", "RELAY_TRUSTED_PROXY_HOPS", "RELAY_BUCKET"}
    assert receiver.values["RELAY_EVENTS_TOPIC"] == EVENTS_TOPIC
    assert receiver.values["RELAY_BUCKET"] == f"{PROJECT}-relay-outputs"  # bodies past 4 MiB go there
    assert receiver.values["FUNCTION_SOURCE"] == "receiver/main.py"
    assert receiver.values["FUNCTION_TARGET"] == "receive"
    assert receiver.values["RELAY_TELEMETRY_FLUSH_EACH_REQUEST"] == "false"  # CPU always allocated
    assert receiver.secrets == {"RELAY_WEBHOOK_SECRETS": "webhook-secret-under-test"}


def test_archive_outputs_gets_exactly_its_variables_and_no_secret() -> None:
    archive = _real()["archive-outputs"]
    assert set(archive.values) == COMMON | HANDLER | {
        "THREADS",
        "RELAY_PUSH_SERVICE_ACCOUNT",
        "ENABLE_GCS_PYTHON_CLIENT_OTEL_TRACES",
        "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA",
    }
    assert archive.values["FUNCTION_TARGET"] == "archive_outputs"
    assert archive.values["FUNCTION_SOURCE"] == "handlers/main.py"
    assert archive.values["RELAY_BUCKET"] == BUCKET
    assert archive.values["RELAY_EVENTS_TOPIC"] == EVENTS_TOPIC
    assert archive.values["RELAY_JOB_EVENTS_TOPIC"] == JOB_EVENTS_TOPIC
    assert archive.values["RELAY_EVENT_RETENTION_DAYS"] == "30"
    assert archive.values["RELAY_PUSH_SERVICE_ACCOUNT"] == PUSH_ACCOUNT
    assert archive.values["THREADS"] == "8"
    assert archive.values["RELAY_TELEMETRY_FLUSH_EACH_REQUEST"] == "true"
    assert archive.secrets == {}


def test_the_other_services() -> None:
    envs = _real()
    job_status, reconciler, status_page = envs["job-status"], envs["reconciler"], envs["status-page"]
    assert set(job_status.values) == COMMON | HANDLER | {"THREADS", "RELAY_PUSH_SERVICE_ACCOUNT"}
    assert job_status.values["FUNCTION_TARGET"] == "job_status"
    assert set(reconciler.values) == COMMON | HANDLER | {"RELAY_RECONCILE_INVOKER"}
    assert reconciler.values["RELAY_RECONCILE_INVOKER"] == f"relay-scheduler@{PROJECT}.iam.gserviceaccount.com"
    assert reconciler.values["FUNCTION_TARGET"] == "reconcile"
    assert reconciler.secrets == {"REPLICATE_API_TOKEN": "relay-replicate-api-token"}  # variables.tf's default
    assert set(status_page.values) == COMMON | {"THREADS"}
    assert status_page.values["THREADS"] == "4"
    table = '{"models": {"acme/restore": 0.000725}}'
    assert _real(price_table=table)["status-page"].values["RELAY_PRICE_TABLE"] == table  # only when given
    assert job_status.secrets == status_page.secrets == {}


def test_the_api_gets_the_receivers_url_its_invokers_e_mails_and_the_replicate_token() -> None:
    members = ["serviceAccount:next-app@p.iam.gserviceaccount.com", "user:dev@example.com"]
    api = _real(api_invokers=members, region="europe-west1")["api"]
    expected = {"THREADS", "RELAY_BUCKET", "RELAY_WEBHOOK_URL", "RELAY_API_INVOKERS", "RELAY_API_OPERATORS"}
    assert set(api.values) == COMMON | expected
    assert api.values["FUNCTION_TARGET"] == "api"
    assert api.values["RELAY_WEBHOOK_URL"] == f"https://receiver-{PROJECT_NUMBER}.europe-west1.run.app/"
    assert api.values["RELAY_API_INVOKERS"] == "next-app@p.iam.gserviceaccount.com dev@example.com"
    verifier = f"relay-verify@{PROJECT}.iam.gserviceaccount.com"  # relay verify's caller (iam.tf)
    assert api.values["RELAY_API_OPERATORS"] == verifier  # two apps, no operator named: verify's account alone
    assert api.secrets == {"REPLICATE_API_TOKEN": "relay-replicate-api-token"}
    single = _real(api_invokers=["serviceAccount:next-app@p.iam.gserviceaccount.com"])["api"].values
    assert single["RELAY_API_OPERATORS"] == f"next-app@p.iam.gserviceaccount.com {verifier}"  # one app reads all
    assert _real()["api"].values["RELAY_API_INVOKERS"] == ""  # no app by default


def test_variables_reach_the_environment() -> None:
    envs = _real(log_level="DEBUG", event_retention_days=7, handlers_cpu_always_allocated=True)
    assert {env.values["RELAY_LOG_LEVEL"] for env in envs.values()} == {"DEBUG"}
    assert envs["job-status"].values["RELAY_EVENT_RETENTION_DAYS"] == "7"
    assert envs["job-status"].values["RELAY_TELEMETRY_FLUSH_EACH_REQUEST"] == "false"


def test_the_push_account_must_be_given() -> None:
    with pytest.raises(TerraformEvalError, match=r"google_service_account\.push\.email"):
        service_environments(
            TERRAFORM,
            variables={"project_id": PROJECT},
            resources={"data.google_project.this.number": PROJECT_NUMBER},
        )


def test_the_project_id_must_be_given() -> None:
    with pytest.raises(TerraformEvalError, match=r"var\.project_id .*no default"):
        service_environments(TERRAFORM, variables={}, resources=COMPUTED)


# ---- the fixture module ----

WORKER_ACCOUNTS = {f'google_service_account.worker["{name}"].email': f"{name}@sa" for name in ("fast", "slow", "web")}


def _fixture(
    tmp_path: Path,
    file: str = "",
    old: str = "",
    new: str = "",
    *,
    variables: dict[str, object] | None = None,
    resources: dict[str, object] | None = None,
) -> dict[str, ServiceEnv]:
    """The fixture module's services, with `old` replaced by `new` in `file` first."""
    for path in FIXTURE.iterdir():
        shutil.copy(path, tmp_path)
    if file:
        text = (tmp_path / file).read_text()
        assert old in text, f"{old!r} is not in {file}"
        (tmp_path / file).write_text(text.replace(old, new, 1))
    return service_environments(
        tmp_path,
        variables={"project_id": "proj"} if variables is None else variables,
        resources=WORKER_ACCOUNTS if resources is None else resources,
    )


def test_fixture_for_expressions_conditionals_and_templates(tmp_path: Path) -> None:
    envs = _fixture(tmp_path)
    assert set(envs) == {"fast", "slow", "web"}  # the queue "off" is filtered out by `if q.enabled`
    fast, web = envs["fast"], envs["web"]
    assert fast.values == {
        "STATIC": "fixed",
        "REPLICAS": "3",
        "SERVICE": "fast",
        "THREADS": "4",
        "PUBLIC": "false",
        "LABEL": "proj/prod",
        "TOPIC": "fast-topic",
        "QUEUES": "FAST,SLOW",
        "ALL_QUEUES": "fast,slow,off",
        "ACCOUNT": "fast@sa",
        "FIRST": "fallback",
        "MODE": "europe-west1-2",
        "HAS_FAST": "true",
    }
    assert fast.secrets == {"TOKEN": "token-europe-west1"}
    assert web.values["THREADS"] == "6"  # 2 * var.replicas
    assert web.values["TOPIC"] == ""  # the conditional's other branch (no topic for web)
    assert web.values["HAS_FAST"] == "false"
    assert web.secrets == {}


def test_fixture_variables_override_defaults(tmp_path: Path) -> None:
    envs = _fixture(tmp_path, variables={"project_id": "p2", "debug": True, "region": "asia-east1", "replicas": 5})
    assert envs["slow"].values["LABEL"] == "p2/debug"
    assert envs["slow"].values["MODE"] == "asia-east1-2"
    assert envs["slow"].secrets == {"TOKEN": "token-asia-east1"}
    assert envs["web"].values["THREADS"] == "10"


@pytest.mark.parametrize(
    ("file", "old", "new", "named"),
    [
        pytest.param("main.tf", "local.suffix}", "local.sufix}", "local.sufix", id="undefined local"),
        pytest.param(
            "main.tf", '? "debug" :', "? local.nope :", "local.nope", id="undefined local in a branch not taken"
        ),
        pytest.param(
            "main.tf", "try(local.config.missing", "try(local.confg.missing", "local.confg", id="try hides no typo"
        ),
        pytest.param(
            "run.tf",
            "google_pubsub_topic.queue[each.key].name",
            "google_pubsub_topic.queue[each.key].nmae",
            'google_pubsub_topic.queue["fast"].nmae',
            id="misspelled attribute",
        ),
        pytest.param(
            "run.tf",
            "google_pubsub_topic.queue[each.key]",
            "google_pubsub_topics.queue[each.key]",
            "google_pubsub_topics.queue",
            id="unknown resource",
        ),
        pytest.param(
            "run.tf",
            "google_pubsub_topic.queue[each.key]",
            'google_pubsub_topic.queue["nope"]',
            '["nope"]',
            id="no such instance",
        ),
        pytest.param("run.tf", 'value = "fixed"', "value = var.nope", "var.nope", id="undeclared variable"),
        pytest.param("run.tf", 'join(",", local.names)', 'jion(",", local.names)', "jion", id="unknown function"),
        pytest.param("run.tf", "= local.label", "= local.queues", "env LABEL", id="object as a value"),
        pytest.param("run.tf", "= local.label", "= null", "env LABEL", id="null as a value"),
        pytest.param("main.tf", '"debug" : "prod"', '"debug" : local.label', "cycle", id="cycle"),
        pytest.param(
            "main.tf",
            "for_each = local.queues",
            "for_each = [for k, q in local.queues : k]",
            "must be a map or a set of strings",
            id="for_each over a list",
        ),
    ],
)
def test_fixture_mistakes_are_named(tmp_path: Path, file: str, old: str, new: str, named: str) -> None:
    with pytest.raises(TerraformEvalError) as raised:
        _fixture(tmp_path, file, old, new)
    assert named in str(raised.value)


def test_fixture_missing_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(TerraformEvalError, match=r"var\.project_id \(variables\.tf:3\) has no default"):
        _fixture(tmp_path, variables={})


def test_fixture_undeclared_variable_given_is_named(tmp_path: Path) -> None:
    with pytest.raises(TerraformEvalError, match="regoin"):
        _fixture(tmp_path, variables={"project_id": "p", "regoin": "x"})


def test_fixture_computed_attribute_not_given_names_its_address(tmp_path: Path) -> None:
    with pytest.raises(TerraformEvalError, match=r'google_service_account\.worker\["fast"\]\.email'):
        _fixture(tmp_path, resources={})


def test_fixture_given_computed_attributes_do_not_override_arguments(tmp_path: Path) -> None:
    envs = _fixture(tmp_path, resources={**WORKER_ACCOUNTS, 'google_pubsub_topic.queue["fast"].name': "other"})
    assert envs["fast"].values["TOPIC"] == "fast-topic"


# ---- expressions, one at a time ----


def _value(tmp_path: Path, expression: str, locals_: str = "") -> str:
    (tmp_path / "main.tf").write_text(
        f"locals {{\n{locals_}\n}}\n"
        'resource "google_cloud_run_v2_service" "s" {\n  name = "s"\n  template {\n    containers {\n'
        f'      env {{\n        name  = "X"\n        value = {expression}\n      }}\n'
        "    }\n  }\n}\n"
    )
    return service_environments(tmp_path, variables={}, resources={})["s"].values["X"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('"${1 + 2 * 3}"', "7"),
        ("10 / 4", "2.5"),
        ("5 + 0", "5"),
        ("-7 % 4", "-3"),
        ("jsonencode(toset([10, 9, 10]))", "[9,10]"),
        ("7 % 4 - -(2 - 5)", "0"),
        ("1.0 * 3", "3"),
        ("tostring(2.50)", "2.5"),
        ("true && !false", "true"),
        ('1 == "1"', "false"),
        ("true == 1", "false"),
        ("3 >= 3 || local.never", "true"),
        ("jsonencode({ for k, v in { b = 2, a = 1, c = 3 } : k => v * 10 if v > 1 })", '{"b":20,"c":30}'),
        ('jsonencode([for i, s in ["x", "y"] : "${i}:${s}"])', '["0:x","1:y"]'),
        ('jsonencode({ for s in ["a", "bb", "cc"] : length(s) => s... })', '{"1":["a"],"2":["bb","cc"]}'),
        ('jsonencode(toset(["b", "a", "b"]))', '["a","b"]'),
        ('jsonencode(setproduct(["a"], [1, 2]))', '[["a",1],["a",2]]'),
        ("jsonencode(one([]))", "null"),
        ('one(distinct(["a", "a"]))', "a"),
        ('coalesce("", null, "z")', "z"),
        ('lookup({ a = 1 }, "b", "none")', "none"),
        ('replace("a-b-c", "-", "_")', "a_b_c"),
        ('replace("v1.2", "/v(\\\\d)/", "V$1")', "V1.2"),
        ('format("%s=%03d", "n", 7)', "n=007"),
        ('"$${literal}"', "${literal}"),
        ('"tab\\tquote\\""', 'tab\tquote"'),
        ('try(tonumber("x"), "n/a")', "n/a"),
        ("can(local.m.missing)", "false"),
        ('join(",", [{ n = "a" }, { n = "b" }][*].n)', "a,b"),
        ('{ "a-b" = 1 }["a-b"]', "1"),
        ("jsonencode(concat(keys({ b = 1, a = 2 }), values({ b = 1, a = 2 })))", '["a","b",2,1]'),
        ('contains(["x"], "x") ? upper("yes") : lower("NO")', "YES"),
        ("local.m.k", "from a local"),
        ("(local.m).k", "from a local"),
    ],
)
def test_expressions(tmp_path: Path, expression: str, expected: str) -> None:
    assert _value(tmp_path, expression, 'm = { k = "from a local" }\nnever = null') == expected


def test_expression_errors_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(TerraformEvalError, match=r"main\.tf:10: .*no attribute 'missing'"):
        _value(tmp_path, "local.m.missing", "m = {}")


def test_values_are_json_encodable_strings() -> None:
    """What the image test hands to a container: str -> str only."""
    envs = _real()
    json.dumps({name: [dict(env.values), dict(env.secrets)] for name, env in envs.items()})
