"""Offline checks of the deployment layer: Terraform, cloudbuild.yaml and the Dockerfile.

Nothing here reaches Google: Terraform is parsed with python-hcl2, not planned. The checks hold
production to the local topology (infra/topology.yaml) and to the security invariants.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from google.api.metric_pb2 import MetricDescriptor
from google.cloud import monitoring_v3
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from replicate_relay import telemetry, telemetry_setup
from replicate_relay.deploy import pins
from replicate_relay.devstack.hcl_eval import load_blocks
from replicate_relay.devstack.terraform_env import _Module, local_computed  # _Module: to evaluate a local

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "infra" / "terraform"
TOPOLOGY = yaml.safe_load((ROOT / "infra" / "topology.yaml").read_text())
TF_FILES = sorted(TERRAFORM.glob("*.tf"))
_OPTIONS = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)

# Mirrors replicate_relay/telemetry.py (METRIC_NAMES, and the attributes each instrument is recorded with):
# the only workload.googleapis.com/relay.* metrics the dashboard and the alerts may name, and the
# only metric labels they may group or filter them by. To be pointed at the telemetry module's
# own constant; until then test_the_metric_list_mirrors_relay_telemetry keeps the two equal.
RELAY_METRICS: dict[str, frozenset[str]] = {
    "relay.webhooks": frozenset({"outcome", "reason"}),
    "relay.webhook.verification_failures": frozenset({"reason"}),
    "relay.webhook.duration": frozenset({"outcome"}),
    "relay.publish.duration": frozenset({"topic", "outcome"}),
    "relay.handler.duration": frozenset({"handler", "outcome"}),
    "relay.job.end_to_end_latency": frozenset({"state"}),
    "relay.archive.bytes": frozenset(),
    "relay.messages.dead_lettered": frozenset({"handler"}),
    "relay.reconciler.recovered": frozenset(),
    "relay.job.predict_time": frozenset({"model", "deployment", "kind", "state"}),
    "relay.jobs.not_stored": frozenset({"state"}),
}
RELAY_HISTOGRAMS = frozenset(
    {"relay.webhook.duration", "relay.publish.duration", "relay.handler.duration", "relay.job.end_to_end_latency"}
)
# Traces through the Telemetry API (telemetry.traces.write), metrics to Cloud Monitoring.
TELEMETRY_ROLES = {"roles/telemetry.tracesWriter", "roles/monitoring.metricWriter"}


def test_the_metrics_named_here_are_the_ones_relay_emits() -> None:
    """RELAY_METRICS adds the label names the filters may use; the names are replicate_relay.telemetry's."""
    assert set(RELAY_METRICS) == set(telemetry.METRIC_NAMES)


@functools.cache  # python-hcl2 takes a while per file; the tests only read what it returns
def _parse(path: Path) -> dict[str, Any]:
    with path.open() as file:
        return hcl2.load(file, serialization_options=_OPTIONS)


def _unquote(key: str) -> str:
    return key.strip('"')


def _resources() -> list[tuple[str, str, dict[str, Any]]]:
    """(type, name, body) of every resource in the module."""
    found = []
    for path in TF_FILES:
        for entry in _parse(path).get("resource", []):
            for rtype, named in entry.items():
                for name, body in named.items():
                    found.append((_unquote(rtype), _unquote(name), body))
    return found


def _resource(rtype: str, name: str) -> dict[str, Any]:
    matches = [body for t, n, body in _resources() if (t, n) == (rtype, name)]
    assert len(matches) == 1, f"expected one {rtype}.{name}, found {len(matches)}"
    return matches[0]


def _block(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    assert isinstance(value, list), f"block {name} missing"
    assert len(value) == 1, f"expected one {name} block"
    block = value[0]
    assert isinstance(block, dict)
    return block


def _strings(node: Any) -> Iterator[str]:
    """Every string in a parsed tree, keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield _unquote(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _topology_names() -> set[str]:
    names = set(TOPOLOGY["topics"])
    for sub in TOPOLOGY["subscriptions"]:
        names |= {sub["name"], sub["topic"], sub["push_handler"]}
        names |= {sub["dead_letter"]["topic"], sub["dead_letter"]["subscription"]}
    names.add(TOPOLOGY["bucket"]["name_suffix"])
    return names


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


CLOUDBUILD_FILES = ("cloudbuild.ci.yaml", "cloudbuild.yaml")
DIGEST = re.compile(r"[a-z0-9][a-z0-9._/-]*:[\w.-]+@sha256:[0-9a-f]{64}")


def _cloudbuild(name: str = "cloudbuild.yaml") -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


def _step_strings(build: dict[str, Any]) -> list[str]:
    strings = []
    for step in build["steps"]:
        strings.extend(str(arg) for arg in step.get("args", []))
        if "script" in step:
            strings.append(str(step["script"]))
    return strings


def _deploys() -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """cloudbuild.yaml's `gcloud run deploy NAME --flag=value …` steps, by service: the step and its flags."""
    deploys = {}
    for step in _cloudbuild()["steps"]:
        for string in [str(arg) for arg in step.get("args", [])]:
            words = shlex.split(string.replace("$$", "$"))
            if words[:3] == ["gcloud", "run", "deploy"]:
                deploys[words[3]] = (step, dict(word.removeprefix("--").partition("=")[::2] for word in words[4:]))
    return deploys


# ---- Terraform parses ----


def test_the_terraform_module_has_every_expected_file() -> None:
    expected = {"versions.tf", "variables.tf", "main.tf", "iam.tf", "pubsub.tf", "storage.tf", "firestore.tf"}
    expected |= {"run.tf", "scheduler.tf", "secrets.tf", "monitoring.tf", "outputs.tf", "audit.tf"}
    assert expected <= {path.name for path in TF_FILES}


@pytest.mark.parametrize("path", TF_FILES, ids=lambda path: path.name)
def test_every_terraform_file_parses_as_hcl(path: Path) -> None:
    assert _parse(path), f"{path.name} parsed to nothing"


def test_the_google_provider_and_terraform_versions_are_pinned() -> None:
    block = _parse(TERRAFORM / "versions.tf")["terraform"][0]
    assert block["required_version"].startswith(">=")
    google = block["required_providers"][0]["google"]
    assert google["source"] == "hashicorp/google"
    assert google["version"].startswith("~>")


# ---- local and production topology cannot drift ----


def test_terraform_reads_the_topology_file_with_yamldecode() -> None:
    text = "\n".join(path.read_text() for path in TF_FILES)
    assert text.count('yamldecode(file("${path.module}/../topology.yaml"))') == 1


def test_terraform_reads_the_firestore_indexes_file_with_jsondecode() -> None:
    text = "\n".join(path.read_text() for path in TF_FILES)
    assert 'jsondecode(file("${path.module}/../firestore.indexes.json"))' in text
    index = _resource("google_firestore_index", "composite")
    assert "local.indexes.indexes" in index["for_each"]
    ttl = _resource("google_firestore_field", "ttl")
    assert "local.indexes.fieldOverrides" in ttl["for_each"]
    assert "ttl_config" in ttl


def test_no_topology_name_is_hard_coded_in_terraform() -> None:
    names = _topology_names()
    for path in TF_FILES:
        for string in _strings(_parse(path)):
            assert string not in names, f"{path.name} hard-codes {string!r}; derive it from local.topology"
            for name in names:
                assert f'"{name}"' not in string, f"{path.name} hard-codes {name!r} in {string!r}"


def test_topics_and_subscriptions_are_created_for_each_entry_of_the_topology() -> None:
    topic = _resource("google_pubsub_topic", "topic")
    assert topic["for_each"] == "${toset(local.topology.topics)}"
    main_locals = _parse(TERRAFORM / "main.tf")["locals"][0]
    assert "local.topology.subscriptions" in main_locals["subscriptions"]
    assert "local.topology.subscriptions" in main_locals["dead_letters"]
    assert _resource("google_pubsub_subscription", "push")["for_each"] == "${local.subscriptions}"
    assert _resource("google_pubsub_topic", "dead_letter")["for_each"] == "${local.dead_letters}"
    assert _resource("google_pubsub_subscription", "dead_letter")["for_each"] == "${local.dead_letters}"


def test_push_subscription_settings_come_from_the_topology_fields() -> None:
    push = _resource("google_pubsub_subscription", "push")
    assert push["name"] == "${each.key}"
    assert push["topic"] == "${google_pubsub_topic.topic[each.value.topic].id}"
    assert push["ack_deadline_seconds"] == "${each.value.ack_deadline_seconds}"
    assert push["filter"] == "${try(each.value.filter, null)}"
    retry = _block(push, "retry_policy")
    assert "each.value.retry_policy.minimum_backoff_seconds" in retry["minimum_backoff"]
    assert "each.value.retry_policy.maximum_backoff_seconds" in retry["maximum_backoff"]
    dead_letter = _block(push, "dead_letter_policy")
    assert dead_letter["max_delivery_attempts"] == "${each.value.dead_letter.max_delivery_attempts}"
    endpoint = _block(push, "push_config")["push_endpoint"]
    assert endpoint == "${google_cloud_run_v2_service.service[each.value.push_handler].uri}"


def test_dead_letter_topics_and_subscriptions_are_named_by_the_topology() -> None:
    assert _resource("google_pubsub_topic", "dead_letter")["name"] == "${each.value.topic}"
    dead_sub = _resource("google_pubsub_subscription", "dead_letter")
    assert dead_sub["name"] == "${each.value.subscription}"
    assert dead_sub["topic"] == "${google_pubsub_topic.dead_letter[each.key].id}"
    for sub in TOPOLOGY["subscriptions"]:
        assert sub["dead_letter"]["topic"], sub["name"]
        assert sub["dead_letter"]["subscription"], sub["name"]


def test_the_bucket_name_comes_from_the_topology_suffix() -> None:
    main_locals = _parse(TERRAFORM / "main.tf")["locals"][0]
    assert main_locals["bucket_name"] == "${var.project_id}-${local.topology.bucket.name_suffix}"
    assert _resource("google_storage_bucket", "outputs")["name"] == "${local.bucket_name}"


# ---- invariants ----


def _push_config(body: dict[str, Any]) -> dict[str, Any] | None:
    """A subscription's push_config block, written out or made by `dynamic "push_config"` (the app
    subscriptions, pushed or pulled per entry: its content is what every pushed one gets)."""
    if "push_config" in body:
        return _block(body, "push_config")
    dynamic = [entry["push_config"] for entry in body.get("dynamic", []) if "push_config" in entry]
    assert len(dynamic) <= 1, "more than one dynamic push_config"
    return _block(dynamic[0], "content") if dynamic else None


def test_every_push_subscription_has_oidc_a_retry_policy_and_a_dead_letter_topic() -> None:
    subscriptions = [(name, body) for rtype, name, body in _resources() if rtype == "google_pubsub_subscription"]
    push_subscriptions = [(name, body) for name, body in subscriptions if _push_config(body) is not None]
    assert {name for name, _ in push_subscriptions} == {"push", "app"}, "the handlers' and the apps' pushes"
    # "${google_pubsub_topic.dead_letter[each.key].id}" -> "${google_pubsub_topic.dead_letter"
    pull_subscriptions = [body for _, body in subscriptions if _push_config(body) is None]
    dead_letter_topics_with_subscriptions = {body["topic"].split("[")[0] for body in pull_subscriptions}
    for name, body in push_subscriptions:
        oidc = _block(_push_config(body) or {}, "oidc_token")
        assert oidc.get("service_account_email"), f"{name}: OIDC token without a service account"
        assert oidc.get("audience"), f"{name}: OIDC token without an audience"
        retry = _block(body, "retry_policy")
        assert retry.get("minimum_backoff"), name
        assert retry.get("maximum_backoff"), name
        dead_letter = _block(body, "dead_letter_policy")
        assert dead_letter.get("max_delivery_attempts"), name
        topic_ref = dead_letter["dead_letter_topic"].split("[")[0]
        assert topic_ref in dead_letter_topics_with_subscriptions, f"{name}: its dead-letter topic has no subscription"


def test_the_pubsub_service_agent_may_dead_letter_every_subscription() -> None:
    publisher = _resource("google_pubsub_topic_iam_member", "pubsub_agent_publishes_dead_letters")
    assert (publisher["role"], publisher["for_each"]) == ("roles/pubsub.publisher", "${local.dead_letters}")
    subscriber = _resource("google_pubsub_subscription_iam_member", "pubsub_agent_forwards_from_source")
    assert (subscriber["role"], subscriber["for_each"]) == ("roles/pubsub.subscriber", "${local.subscriptions}")
    assert publisher["member"] == subscriber["member"] == "${local.pubsub_service_agent}"


def test_no_cloud_run_service_but_the_receiver_is_public() -> None:
    public_members = {"allUsers", "allAuthenticatedUsers"}
    public_grants = []
    for rtype, name, body in _resources():
        if not rtype.startswith("google_cloud_run_v2_service_iam_"):
            continue
        members = {body.get("member")} | set(body.get("members", []))
        if members & public_members:
            public_grants.append(f"{rtype}.{name}")
            # Granted to the services run.tf marks public, and to no other.
            assert body["for_each"] == "${toset([for name, service in local.services : name if service.public])}"
            assert body["name"] == "${google_cloud_run_v2_service.service[each.key].name}", f"{rtype}.{name}"
    assert public_grants == ["google_cloud_run_v2_service_iam_member.receiver_public"]
    assert {name for name, entry in _services().items() if entry["public"] == "true"} == {"receiver"}
    # The grant changed from a single resource to for_each: state moves, the grant is not re-created.
    moved = [block for path in TF_FILES for block in _parse(path).get("moved", [])]
    assert {
        "from": "${google_cloud_run_v2_service_iam_member.receiver_public}",
        "to": '${google_cloud_run_v2_service_iam_member.receiver_public["receiver"]}',
    } in moved


def test_only_the_receiver_the_status_page_and_the_api_accept_traffic_from_the_internet() -> None:
    """The status page needs internet ingress for `gcloud run services proxy` (run on the operator's
    machine), the API for apps outside Google Cloud; both stay private through IAM: no public
    invoker, run.invoker for named members only."""
    assert _resource("google_cloud_run_v2_service", "service")["ingress"] == "${each.value.ingress}"
    ingress = {name: entry["ingress"] for name, entry in _services().items()}
    assert set(ingress.values()) <= {'"INGRESS_TRAFFIC_ALL"', '"INGRESS_TRAFFIC_INTERNAL_ONLY"'}, ingress
    assert {name for name, value in ingress.items() if value == '"INGRESS_TRAFFIC_ALL"'} == {
        "receiver",
        "status-page",
        "api",
    }


def test_no_iam_grant_gives_owner_or_editor() -> None:
    forbidden = {"roles/owner", "roles/editor"}
    grants = [(t, n, b) for t, n, b in _resources() if re.search(r"_iam_(member|binding|policy)$", t)]
    assert grants, "no IAM grants found"
    for rtype, name, body in grants:
        roles = {body.get("role")} | set(re.findall(r"roles/[a-zA-Z.]+", str(body)))
        assert not roles & forbidden, f"{rtype}.{name} grants {roles & forbidden}"
    # Most grants take their role from a local map (for_each): no role string anywhere may be one.
    for path in TF_FILES:
        assert not set(re.findall(r"roles/[a-zA-Z.]+", path.read_text())) & forbidden, path.name


# ---- the status page: a private, read-only Cloud Run service ----

STATUS_PAGE_MEMBER = '${google_service_account.service["status-page"].member}'
WRITE_ROLES = {
    "roles/pubsub.publisher",
    "roles/pubsub.editor",
    "roles/pubsub.admin",
    "roles/datastore.user",
    "roles/datastore.owner",
    "roles/storage.objectCreator",
    "roles/storage.objectUser",
    "roles/storage.objectAdmin",
    "roles/storage.admin",
    "roles/secretmanager.secretAccessor",
    "roles/run.invoker",
}


def _variables() -> dict[str, dict[str, Any]]:
    return {_unquote(k): v for block in _parse(TERRAFORM / "variables.tf")["variable"] for k, v in block.items()}


def test_the_status_page_is_a_private_cloud_run_service() -> None:
    entry = _services()["status-page"]
    assert (entry["source"], entry["target"], entry["asgi"]) == (
        '"replicate_relay/ops/statuspage.py"',
        '"status_page"',
        "false",
    )
    assert re.search(
        r"^def status_page\(", (ROOT / "replicate_relay/ops/statuspage.py").read_text(), flags=re.MULTILINE
    )
    assert entry["public"] == "false"
    assert (entry["min"], entry["max"], entry["cpu_idle"], entry["timeout"]) == ("0", "1", "true", "60")
    assert 1 <= int(entry["concurrency"]) <= 8
    assert f'THREADS = "{entry["concurrency"]}"' in entry["env"]
    # Its only invokers: the members of var.status_page_viewers, with run.invoker on this service.
    invokers = [
        (name, body)
        for rtype, name, body in _resources()
        if rtype.startswith("google_cloud_run_v2_service_iam_") and '["status-page"]' in body.get("name", "")
    ]
    assert [name for name, _ in invokers] == ["status_page_viewers"]
    grant = invokers[0][1]
    assert (grant["role"], grant["for_each"], grant["member"]) == (
        "roles/run.invoker",
        "${toset(var.status_page_viewers)}",
        "${each.value}",
    )


def test_status_page_viewers_default_to_nobody_and_can_never_be_public() -> None:
    variable = _variables()["status_page_viewers"]
    assert (variable["type"], variable["default"]) == ("${list(string)}", [])
    condition = _block(variable, "validation")["condition"]
    assert condition.startswith("${alltrue([for member in var.status_page_viewers : can(regex(")
    literal = re.search(r'regex\(("(?:[^"\\]|\\.)*")', condition)
    assert literal, condition
    pattern = re.compile(json.loads(literal.group(1)))  # the HCL string's escapes are JSON's here
    for member in ("user:ops@example.com", "group:relay-ops@example.com", "serviceAccount:a@p.iam.gserviceaccount.com"):
        assert pattern.search(member), member
    for member in ("allUsers", "allAuthenticatedUsers", "ops@example.com", "user:", "user:a@example.com allUsers"):
        assert not pattern.search(member), member


def test_the_status_page_account_reads_and_writes_nothing() -> None:
    iam = _locals(TERRAFORM / "iam.tf")
    assert "status-page" in iam["runtime_accounts"]
    # Grants reach a runtime account either through a map keyed by account (project, topics,
    # bucket, secrets) or by naming the account; nothing else may name one.
    by_map = {
        "${google_service_account.service[each.value.account].member}",
        "${google_service_account.service[each.value.service].member}",
    }
    direct = []
    for rtype, name, body in _resources():
        member = str(body.get("member", ""))
        if "google_service_account.service[" in member:
            assert member in by_map or member.startswith('${google_service_account.service["'), f"{rtype}.{name}"
            if member == STATUS_PAGE_MEMBER:
                direct.append((rtype, name, body))
    # Project level: the telemetry roles every account has (checked below), and its own list.
    assert (
        '{for role in local.status_page_roles : "status-page ${role}" => {account = "status-page", role = role}}'
        in iam["project_grants"]
    )
    assert (
        iam["firestore_users"] == '${concat(keys(local.handler_services), ["reconciler", "api"])}'
    )  # not datastore.user
    roles = TELEMETRY_ROLES | set(iam["status_page_roles"])
    for local in ("topic_publishers", "bucket_roles"):
        assert "status-page" not in str(iam[local]), f"the status page appears in {local}"
    assert all(
        "status-page" not in secret["services"] for secret in _locals(TERRAFORM / "secrets.tf")["secrets"].values()
    )
    # Nothing on any resource itself: its dead-letter counts come from Cloud Monitoring.
    assert direct == []
    assert roles == TELEMETRY_ROLES | {"roles/datastore.viewer", "roles/monitoring.viewer"}
    assert not roles & WRITE_ROLES


# Predefined roles holding pubsub.subscriptions.consume, with which a pull can be acknowledged: an
# acknowledged dead letter is gone, and with it the only copy kept for `relay replay`.
CONSUMING_ROLES = {"roles/pubsub.subscriber", "roles/pubsub.editor", "roles/pubsub.admin"}


def test_the_status_page_cannot_acknowledge_a_dead_letter() -> None:
    status_page = []
    for rtype, name, body in _resources():
        if not re.search(r"_iam_(member|binding|policy)$", rtype):
            continue
        member = str(body.get("member", "")) + str(body.get("members", ""))
        if "status-page" in member or "each.value.account" in member:
            status_page.append((rtype, name, body))
    # Grants keyed by account (project roles) name the status page in the map they iterate.
    iam = _locals(TERRAFORM / "iam.tf")
    project_roles = set(iam["status_page_roles"]) | TELEMETRY_ROLES
    assert not project_roles & CONSUMING_ROLES
    assert not any(role.startswith("roles/pubsub.") for role in project_roles)
    on_subscriptions = [(t, n) for t, n, body in status_page if t.startswith("google_pubsub_subscription_iam")]
    assert on_subscriptions == []
    # And no subscription grant anywhere names the status page's account in another spelling.
    for rtype, name, body in _resources():
        if rtype.startswith("google_pubsub_"):
            assert "status-page" not in json.dumps(body), f"{rtype}.{name}"


# ---- audit logs and Firestore's rules ----


def test_reads_of_secrets_and_bucket_objects_are_audit_logged() -> None:
    audit = _resource("google_project_iam_audit_config", "data_access")
    assert audit["for_each"] == "${local.data_access_audit}"
    assert audit["project"] == "${var.project_id}"
    assert audit["service"] == "${each.key}"
    dynamic = audit["dynamic"][0]["audit_log_config"]
    assert dynamic["for_each"] == "${each.value}"
    assert dynamic["content"] == [{"log_type": "${audit_log_config.value}"}]
    assert "exempted_members" not in json.dumps(audit)  # nobody's reads go unlogged
    logged = _locals(TERRAFORM / "audit.tf")["data_access_audit"]
    assert logged == {
        "storage.googleapis.com": ["ADMIN_READ", "DATA_READ", "DATA_WRITE"],
        "secretmanager.googleapis.com": ["ADMIN_READ", "DATA_READ"],
    }
    # The bucket's skipped access-logging check rests on exactly these logs.
    assert "Data Access, audit.tf" in (TERRAFORM / "storage.tf").read_text()


def test_firestores_security_rules_deny_every_client_sdk_request() -> None:
    ruleset = _resource("google_firebaserules_ruleset", "firestore")
    files = _block(_block(ruleset, "source"), "files")
    assert files["name"] == "firestore.rules"
    rules = re.sub(r"\s+", " ", files["content"].removeprefix("<<-RULES").removesuffix("RULES")).strip()
    assert rules == (
        "rules_version = '2'; service cloud.firestore { match /databases/{database}/documents { "
        "match /{document=**} { allow read, write: if false; } } }"
    )
    assert "${google_firestore_database.default}" in ruleset["depends_on"]
    release = _resource("google_firebaserules_release", "firestore")
    assert release["name"] == "cloud.firestore"  # the (default) database's release
    ruleset_name = "projects/${var.project_id}/rulesets/${google_firebaserules_ruleset.firestore.name}"
    assert release["ruleset_name"] == ruleset_name
    assert _block(release, "lifecycle")["replace_triggered_by"] == ["${google_firebaserules_ruleset.firestore}"]
    apis = _resource("google_project_service", "apis")["for_each"]
    assert "firebaserules.googleapis.com" in apis
    # The only resources of either type: no second ruleset or release can open a path.
    assert [(t, n) for t, n, _ in _resources() if t.startswith("google_firebaserules_")] == [
        ("google_firebaserules_ruleset", "firestore"),
        ("google_firebaserules_release", "firestore"),
    ]


# ---- the push handlers check Pub/Sub's OIDC token against the push account ----


def test_push_handlers_get_the_account_their_subscriptions_push_as() -> None:
    push_config = _block(_resource("google_pubsub_subscription", "push"), "push_config")
    oidc = _block(push_config, "oidc_token")
    assert oidc["service_account_email"] == "${google_service_account.push.email}"
    # The handler takes the expected audience from its Host header: the push endpoint's host.
    assert oidc["audience"] == push_config["push_endpoint"]
    account = oidc["service_account_email"].removeprefix("${").removesuffix("}")
    for name, entry in _services().items():
        if name in _push_handlers():
            assert f"RELAY_PUSH_SERVICE_ACCOUNT = {account}" in entry["env"], name
        else:
            assert "RELAY_PUSH_SERVICE_ACCOUNT" not in entry["env"], name
    run = _service_locals()
    assert "RELAY_PUSH_SERVICE_ACCOUNT" not in str(run["handler_env"]) + str(run["common_env"])  # reconciler's
    # Checking stays on (RELAY_PUSH_AUTH defaults to oidc), and no service's settings name a Cloud
    # Run service, such as its URI: the for_each resource would depend on itself.
    assert not re.search(r'RELAY_PUSH_AUTH = (?!"oidc")', run["services"])
    assert "google_cloud_run_v2_service" not in json.dumps(run)


def test_the_reconciler_accepts_schedulers_token_only() -> None:
    job = _resource("google_cloud_scheduler_job", "reconcile")
    oidc = _block(_block(job, "http_target"), "oidc_token")
    assert oidc["service_account_email"] == "${google_service_account.scheduler.email}"
    # The reconciler takes the expected audience from its Host header: Scheduler's target URL.
    assert oidc["audience"] == _block(job, "http_target")["uri"]
    assert _resource("google_service_account", "scheduler")["account_id"] == "relay-scheduler"
    iam = _locals(TERRAFORM / "iam.tf")
    assert iam["scheduler_email"] == "relay-scheduler@${var.project_id}.iam.gserviceaccount.com"
    services = _services()
    assert "RELAY_RECONCILE_INVOKER = local.scheduler_email" in services["reconciler"]["env"]
    others = [entry["env"] for name, entry in services.items() if name != "reconciler"]
    assert all("RELAY_RECONCILE_INVOKER" not in env for env in others)


# ---- telemetry: every service exports traces and metrics, and may ----


def _service_locals() -> dict[str, Any]:
    return _parse(TERRAFORM / "run.tf")["locals"][0]


def _push_handlers() -> list[str]:
    return [sub["push_handler"] for sub in TOPOLOGY["subscriptions"]]


def _balanced(text: str, start: int) -> str:
    """The {...} expression opening at text[start]."""
    depth = 0
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start : index + 1]
    raise AssertionError(f"unbalanced braces from {text[start : start + 60]!r}")


def _services() -> dict[str, dict[str, str]]:
    """local.services (run.tf) by service name: each entry's attributes as HCL expression text, `env`
    the whole env expression. The push handlers' entry, written once in a for expression over
    local.handler_services, stands for each of the topology's push handlers."""
    text = _service_locals()["services"]
    entries: dict[str, str] = {}
    for match in re.finditer(r'(?<=[{ ])(?:"?([\w-]+)"? =|name =>) (\{)source = ', text):
        body = _balanced(text, match.start(2))
        if match.group(1):
            entries[match.group(1)] = body
        else:  # name => {...}
            entries |= dict.fromkeys(_push_handlers(), body)
    parsed = {}
    for name, body in entries.items():
        head, _, env = body[1:-1].partition(", env = ")
        attributes = dict(re.findall(r'(?:^|, )(\w+) = ("[^"]*"|[\w.]+\([^()]*\)|[^,]+)', head))
        parsed[name] = {**attributes, "env": env}
    assert parsed, "no service entries found in local.services"
    return parsed


def _locals(path: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in _parse(path).get("locals", []):
        merged.update(block)
    return merged


def test_every_cloud_run_service_account_may_write_traces_and_metrics() -> None:
    service = _resource("google_cloud_run_v2_service", "service")
    assert _block(service, "template")["service_account"] == "${google_service_account.service[each.key].email}"
    assert _resource("google_service_account", "service")["for_each"] == "${local.service_accounts}"
    iam = _locals(TERRAFORM / "iam.tf")
    # Each service runs as the account of its own name, and every account gets both roles.
    assert iam["service_accounts"] == "${merge(local.runtime_accounts, local.handler_accounts)}"
    assert "local.handler_services" in iam["handler_accounts"]
    assert "for name, sub in local.handler_services" in _service_locals()["services"]
    named = set(_services()) - set(_push_handlers())
    assert named == set(iam["runtime_accounts"]), "a Cloud Run service without a runtime account of its name"
    assert set(iam["telemetry_roles"]) == TELEMETRY_ROLES
    assert "setproduct(keys(local.service_accounts), local.telemetry_roles)" in iam["project_grants"]
    grants = _resource("google_project_iam_member", "service")
    assert grants["for_each"] == "${local.project_grants}"
    assert grants["member"] == "${google_service_account.service[each.value.account].member}"


def test_every_service_exports_telemetry_under_its_own_name() -> None:
    run = _service_locals()
    assert run["common_env"]["RELAY_GCP_TELEMETRY"] == "true"
    env_blocks = _block(_block(_resource("google_cloud_run_v2_service", "service"), "template"), "containers")[
        "dynamic"
    ]
    plain_env = next(block["env"] for block in env_blocks if "local.common_env" in block["env"]["for_each"])
    assert "OTEL_SERVICE_NAME = each.key" in plain_env["for_each"]
    assert "RELAY_TELEMETRY_FLUSH_EACH_REQUEST = tostring(each.value.cpu_idle)" in plain_env["for_each"]
    assert re.search(
        r"name == local.archive_service \? \{[^}]*ENABLE_GCS_PYTHON_CLIENT_OTEL_TRACES = \"true\"", run["services"]
    )


def test_the_receiver_keeps_its_cpu_between_requests() -> None:
    """Metrics are exported every 60 s from a background thread; a throttled CPU would delay them."""
    receiver = re.search(r"receiver = \{(?:[^{}]|\{[^{}]*\})*\}", _service_locals()["services"])
    assert receiver, "no receiver entry in local.services"
    assert "cpu_idle = false" in receiver.group(0)
    resources = _block(
        _block(_block(_resource("google_cloud_run_v2_service", "service"), "template"), "containers"), "resources"
    )
    assert resources["cpu_idle"] == "${each.value.cpu_idle}"


# ---- monitoring: the dashboard and the alerts name only what the services and Pub/Sub write ----

MONITORING = TERRAFORM / "monitoring.tf"
WORKLOAD_METRIC = re.compile(r"workload\.googleapis\.com/(relay\.\w[\w.]*\w)")  # not "relay.*" in prose
CUMULATIVE_ALIGNERS = {"ALIGN_DELTA", "ALIGN_RATE"}
GAUGE_ALIGNERS = {"ALIGN_MAX", "ALIGN_MIN", "ALIGN_MEAN", "ALIGN_SUM", "ALIGN_NEXT_OLDER", "ALIGN_INTERPOLATE"}
DELTA_ALIGNERS = {"ALIGN_DELTA", "ALIGN_RATE", "ALIGN_SUM"}
PUBSUB_KINDS = {
    "pubsub.googleapis.com/subscription/oldest_unacked_message_age": GAUGE_ALIGNERS,
    "pubsub.googleapis.com/subscription/num_undelivered_messages": GAUGE_ALIGNERS,
    "pubsub.googleapis.com/subscription/dead_letter_message_count": DELTA_ALIGNERS,
}


@functools.cache
def _evaluated_local(name: str) -> Any:
    """A local value as Terraform computes it, by replicate_relay.devstack's evaluator (no heredocs)."""
    blocks = load_blocks(TERRAFORM)
    return _Module(TERRAFORM, blocks, {"project_id": "p"}, local_computed("p")).local(name)


def _charts() -> list[dict[str, Any]]:
    charts = _evaluated_local("dashboard_charts")
    assert isinstance(charts, list)
    assert charts, "the dashboard has no charts"
    return charts


def _metric_alerts() -> dict[str, dict[str, Any]]:
    alerts = _locals(MONITORING)["metric_alerts"]
    assert isinstance(alerts, dict)
    return alerts


def _threshold(policy: str) -> dict[str, Any]:
    """The one threshold condition of a google_monitoring_alert_policy resource."""
    return _block(_block(_resource("google_monitoring_alert_policy", policy), "conditions"), "condition_threshold")


def _queries() -> list[tuple[str, str, dict[str, Any]]]:
    """(where, filter, aggregation in the API's camelCase) of every chart data set and alert condition."""
    queries = []
    for chart in _charts():
        for data_set in chart["data_sets"]:
            queries.append((chart["title"], data_set["filter"], data_set["aggregation"]))
    for name, alert in _metric_alerts().items():
        aggregation = {
            "alignmentPeriod": alert["window"],
            "perSeriesAligner": alert["aligner"],
            "crossSeriesReducer": _block(_threshold("metric"), "aggregations")["cross_series_reducer"],
            "groupByFields": alert["group_by"],
        }
        queries.append(
            (
                f"alert {name}",
                alert["filter"].replace("${local.otel_resource}", _evaluated_local("otel_resource")),
                aggregation,
            )
        )
    for policy in ("dead_lettered", "unacked_age"):
        condition = _threshold(policy)
        aggregation = _block(condition, "aggregations")
        camel = {
            "alignmentPeriod": aggregation["alignment_period"],
            "perSeriesAligner": aggregation["per_series_aligner"],
        }
        queries.append((f"alert {policy}", condition["filter"], camel))
    return queries


def _metric_type(filter_: str) -> str:
    types = re.findall(r'metric\.type = "([^"]+)"', filter_)
    assert len(types) == 1, f"a filter names exactly one metric type: {filter_}"
    return types[0]


def _resolve_log_metric(metric_type: str) -> str:
    """logging.googleapis.com/user/<name>: the name of a google_logging_metric declared here.

    Alerts are read as written (`${google_logging_metric.X.name}`), charts as evaluated."""
    declared = {name: body["name"] for rtype, name, body in _resources() if rtype == "google_logging_metric"}
    name = metric_type.removeprefix("logging.googleapis.com/user/")
    if match := re.fullmatch(r"\$\{google_logging_metric\.(\w+)\.name\}", name):
        return declared[match.group(1)]
    assert name in declared.values(), f"not a log-based metric declared in monitoring.tf: {metric_type}"
    return name


def test_the_dashboard_is_json_built_with_jsonencode_from_hcl() -> None:
    dashboard = _resource("google_monitoring_dashboard", "relay")
    assert dashboard["dashboard_json"].startswith("${jsonencode(")
    assert "local.dashboard_widgets" in dashboard["dashboard_json"]
    assert "file(" not in dashboard["dashboard_json"]
    for chart in _charts():
        assert chart["title"], chart
        assert chart["plot"] in {"LINE", "STACKED_AREA", "STACKED_BAR"}, chart["title"]
        assert chart["data_sets"], chart["title"]
        # The API leaves empty lists, empty strings and zeros out of what it returns; sending them
        # would make the provider plan a change to the dashboard every time.
        for data_set in chart["data_sets"]:
            assert data_set["aggregation"].get("groupByFields", ["given"]), f"{chart['title']}: empty groupByFields"
    widgets = _locals(MONITORING)["dashboard_widgets"]
    assert 'data_set.legend == "" ? {} : {legendTemplate = data_set.legend}' in widgets
    tiles = dashboard["dashboard_json"]
    assert "index % 2 == 0 ? {} : {xPos = 24}" in tiles
    assert "index < 2 ? {} : {yPos = floor(index / 2) * 16}" in tiles


@pytest.mark.parametrize(("where", "aggregation"), [(where, aggregation) for where, _, aggregation in _queries()])
def test_every_aggregation_is_valid_for_the_monitoring_api(where: str, aggregation: dict[str, Any]) -> None:
    # The Dashboards API's Aggregation is field for field Monitoring v3's: proto JSON parsing
    # refuses unknown fields and enum values (ParseError).
    parsed = monitoring_v3.Aggregation.from_json(json.dumps(aggregation))
    assert parsed.alignment_period.total_seconds() >= 60, where


def test_aggregations_suit_each_metric_kind() -> None:
    for where, filter_, aggregation in _queries():
        metric = _metric_type(filter_)
        aligner = aggregation["perSeriesAligner"]
        reducer = aggregation.get("crossSeriesReducer", "")
        if name := next(iter(WORKLOAD_METRIC.findall(metric)), None):
            # The exporter writes counters and histograms as CUMULATIVE series.
            assert aligner in CUMULATIVE_ALIGNERS, f"{where}: {aligner} on cumulative {name}"
            if name in RELAY_HISTOGRAMS:
                assert aligner == "ALIGN_DELTA", f"{where}: a distribution cannot be ALIGN_RATE"
                assert reducer.startswith("REDUCE_PERCENTILE_"), f"{where}: chart a percentile of {name}"
        elif metric.startswith("logging.googleapis.com/user/"):
            assert _resolve_log_metric(metric).startswith("relay/"), where
            assert aligner in DELTA_ALIGNERS, f"{where}: {aligner} on a DELTA log-based metric"
        else:
            assert metric in PUBSUB_KINDS, f"{where}: unexpected metric {metric}"
            assert aligner in PUBSUB_KINDS[metric], f"{where}: {aligner} on {metric}"


def test_dashboard_and_alerts_name_only_metrics_relay_emits_with_their_labels() -> None:
    named = set(WORKLOAD_METRIC.findall(MONITORING.read_text()))
    assert named <= set(RELAY_METRICS), f"not emitted by relay: {named - set(RELAY_METRICS)}"
    charted = {name for _, filter_, _ in _queries() for name in WORKLOAD_METRIC.findall(filter_)}
    assert charted == set(RELAY_METRICS), f"not on the dashboard or an alert: {set(RELAY_METRICS) - charted}"
    for where, filter_, aggregation in _queries():
        labels = set(re.findall(r"metric\.labels?\.(\w+)", filter_ + " ".join(aggregation.get("groupByFields", []))))
        for name in WORKLOAD_METRIC.findall(filter_):
            assert _evaluated_local("otel_resource") in filter_, f"{where}: {name} without the exporter's resource"
            assert labels <= RELAY_METRICS[name], f"{where}: {name} has no label {labels - RELAY_METRICS[name]}"


class _RecordingMetricClient:
    """Stands in for MetricServiceClient: keeps what the exporter would write."""

    def __init__(self) -> None:
        self.descriptors: dict[str, Any] = {}
        self.series: list[Any] = []

    def common_project_path(self, project: str) -> str:
        return f"projects/{project}"

    def create_metric_descriptor(self, request: Any) -> Any:
        self.descriptors[request.metric_descriptor.type] = request.metric_descriptor
        return request.metric_descriptor

    def create_time_series(self, request: Any) -> None:
        self.series.extend(request.time_series)


@pytest.mark.parametrize("function_target", ["archive_outputs", None], ids=["functions-framework", "plain-cloud-run"])
def test_relay_metrics_reach_cloud_monitoring_as_the_filters_select_them(
    monkeypatch: pytest.MonkeyPatch, function_target: str | None
) -> None:
    from opentelemetry.exporter.cloud_monitoring import CloudMonitoringMetricsExporter  # noqa: PLC0415
    from opentelemetry.resourcedetector.gcp_resource_detector import _metadata  # noqa: PLC0415

    # Cloud Run as the GCP resource detector sees it: K_* variables and the metadata server. With
    # FUNCTION_TARGET set (functions-framework) it reports gcp_cloud_functions, else gcp_cloud_run.
    for name in ("KUBERNETES_SERVICE_HOST", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "FUNCTION_TARGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("K_CONFIGURATION", "archive-outputs")
    monkeypatch.setenv("K_SERVICE", "archive-outputs")
    monkeypatch.setenv("K_REVISION", "archive-outputs-00007-abc")
    if function_target:
        monkeypatch.setenv("FUNCTION_TARGET", function_target)
    metadata = {"instance": {"id": "0069c7a9", "region": "projects/123/regions/us-central1"}}
    monkeypatch.setattr(_metadata, "is_available", lambda: True)
    monkeypatch.setattr(_metadata, "get_metadata", lambda: {**metadata, "project": {"projectId": "p"}})

    resource = telemetry_setup._resource(telemetry.TelemetrySettings(service="archive-outputs", gcp=True))
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    instruments = telemetry.Metrics(provider.get_meter(telemetry.SCOPE))
    for instrument in vars(instruments).values():
        attributes = dict.fromkeys(RELAY_METRICS[instrument.name], "x")
        (instrument.record if instrument.name in RELAY_HISTOGRAMS else instrument.add)(1, attributes)
    client = _RecordingMetricClient()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter class is marked deprecated
        exporter = CloudMonitoringMetricsExporter(project_id="p", client=client)
    exporter.export(reader.get_metrics_data())
    provider.shutdown()

    wanted = dict(re.findall(r'(resource\.(?:type|labels\.\w+)) = "([^"]+)"', _locals(MONITORING)["otel_resource"]))
    assert {series.metric.type for series in client.series} == {f"workload.googleapis.com/{n}" for n in RELAY_METRICS}
    for series in client.series:
        name = series.metric.type.removeprefix("workload.googleapis.com/")
        written = {"resource.type": series.resource.type} | {
            f"resource.labels.{key}": value for key, value in series.resource.labels.items()
        }
        assert wanted.items() <= written.items(), f"{name} written as {written}"
        assert series.resource.labels["job"] == "archive-outputs"  # OTEL_SERVICE_NAME, the service
        assert set(series.metric.labels) == RELAY_METRICS[name]
        descriptor = client.descriptors[series.metric.type]
        assert descriptor.metric_kind == MetricDescriptor.MetricKind.CUMULATIVE
        assert (descriptor.value_type == MetricDescriptor.ValueType.DISTRIBUTION) == (name in RELAY_HISTOGRAMS)


def test_the_metric_list_mirrors_relay_telemetry() -> None:
    assert set(RELAY_METRICS) == set(telemetry.METRIC_NAMES)


def test_every_alert_policy_has_documentation_saying_what_to_do() -> None:
    policies = [(name, body) for rtype, name, body in _resources() if rtype == "google_monitoring_alert_policy"]
    assert {name for name, _ in policies} == {"dead_lettered", "unacked_age", "metric"}
    texts = []
    for name, body in policies:
        documentation = _block(body, "documentation")
        assert documentation["mime_type"] == "text/markdown", name
        content = documentation["content"]
        if content == "${each.value.documentation}":
            contents = [(f"{name}[{key}]", alert["documentation"]) for key, alert in _metric_alerts().items()]
        else:
            contents = [(name, content)]
        for where, text in contents:
            assert "What it means." in text, where
            assert "What to do." in text, where
            assert "relay " in text, f"{where} names no operator command"
            texts.append(text)
    everything = "\n".join(texts)
    for command in ("relay status", "relay replay --from ", "relay jobs list --stuck"):
        assert command in everything, f"no alert tells the operator about `{command}`"


def test_the_alerts_exist_with_configurable_thresholds() -> None:
    assert _resource("google_monitoring_alert_policy", "dead_lettered")["for_each"] == "${local.dead_letters}"
    condition = _threshold("dead_lettered")
    assert "subscription/num_undelivered_messages" in condition["filter"]
    assert "google_pubsub_subscription.dead_letter[each.key].name" in condition["filter"]
    assert (condition["comparison"], condition["threshold_value"]) == ("COMPARISON_GT", 0)

    # every push subscription
    assert _resource("google_monitoring_alert_policy", "unacked_age")["for_each"] == "${local.subscriptions}"
    condition = _threshold("unacked_age")
    assert "subscription/oldest_unacked_message_age" in condition["filter"]
    assert condition["threshold_value"] == "${var.unacked_age_threshold_seconds}"

    alerts = _metric_alerts()
    assert set(alerts) == {"verification_failures", "reconciler_recovered", "not_stored", "archive_failures"}
    assert "relay.jobs.not_stored" in alerts["not_stored"]["filter"]
    assert "relay.webhook.verification_failures" in alerts["verification_failures"]["filter"]
    assert alerts["verification_failures"]["aligner"] == "ALIGN_RATE"
    assert "relay.reconciler.recovered" in alerts["reconciler_recovered"]["filter"]
    assert "google_logging_metric.archive_failures" in alerts["archive_failures"]["filter"]
    archive_log = _resource("google_logging_metric", "archive_failures")["filter"]
    assert "local.archive_service" in archive_log
    assert "jsonPayload.error_code:*" in archive_log  # jobs failed because of their outputs
    assert "permanent_failure" in archive_log  # messages dropped as undeliverable

    variables = {_unquote(k): v for block in _parse(TERRAFORM / "variables.tf")["variable"] for k, v in block.items()}
    for alert in alerts.values():
        threshold = re.fullmatch(r"\$\{var\.(\w+)(?: / 60)?\}", str(alert["threshold"]))
        assert threshold, f"{alert['display_name']}: the threshold is not a variable"
        assert "default" in variables[threshold.group(1)], threshold.group(1)
    assert variables["notification_channels"]["default"] == []
    for policy in ("dead_lettered", "unacked_age", "metric"):
        assert _resource("google_monitoring_alert_policy", policy)["notification_channels"] == (
            "${local.notification_channels}"
        )
    assert "var.notification_channels" in _locals(MONITORING)["notification_channels"]


# ---- cloudbuild.yaml ----


def test_the_ci_build_runs_only_makefile_targets_that_exist() -> None:
    targets = _makefile_targets()
    command = re.compile(r"(?:^|[;&|]\s*)make[ \t]+([\w-]+)", flags=re.MULTILINE)  # a command, not a package name
    invoked = [
        t for string in _step_strings(_cloudbuild("cloudbuild.ci.yaml")) for t in command.findall(string.strip())
    ]
    assert invoked == ["test"]
    assert set(invoked) <= targets, f"unknown make targets: {set(invoked) - targets}"


@pytest.mark.parametrize("name", CLOUDBUILD_FILES)
def test_cloudbuild_refers_only_to_files_that_exist(name: str) -> None:
    pattern = re.compile(r"(?<![\w./$-])((?:[\w-]+/)*[\w.-]+\.(?:py|ya?ml|json|txt|toml|cfg)|Dockerfile)\b")
    referenced = {match for string in _step_strings(_cloudbuild(name)) for match in pattern.findall(string)}
    missing = sorted(path for path in referenced if not (ROOT / path).is_file())
    assert not missing, f"{name} refers to missing files: {missing}"
    assert ("Dockerfile" in referenced) == (name == "cloudbuild.ci.yaml")


def test_cloudbuild_deploys_functions_that_exist_in_their_sources() -> None:
    deployed = [(flags["update-env-vars"], name) for name, (_, flags) in _deploys().items()]
    assert len(deployed) == len(_services()), deployed
    for env_vars, name in deployed:
        env = dict(pair.split("=", 1) for pair in env_vars.split(","))
        source, target = env["FUNCTION_SOURCE"], env["FUNCTION_TARGET"]
        assert re.search(rf"^(async )?def {target}\(", (ROOT / source).read_text(), flags=re.MULTILINE), (
            f"{source} defines no function {target} ({name})"
        )


def test_cloudbuild_deploys_every_terraform_service_as_terraform_defines_it_and_sets_no_iam() -> None:
    assert _resource("google_service_account", "service")["account_id"] == "relay-${each.key}"
    deploys = _deploys()
    services = _services()
    assert set(deploys) == set(services), "cloudbuild.yaml and run.tf deploy different services"
    for name, (step, flags) in deploys.items():
        entry = services[name]
        assert (step["id"], step["waitFor"]) == (f"deploy-{name}", ["resolve"]), name
        # the digest the resolve step read from the CI build, and nothing else
        assert (flags["region"], flags["image"]) == ("${_REGION}", "$(cat /workspace/image)"), name
        assert flags["service-account"] == f"relay-{name}@$PROJECT_ID.iam.gserviceaccount.com", name
        target = name.replace("-", "_") if entry["target"] == 'replace(name, "-", "_")' else entry["target"].strip('"')
        env = dict(pair.split("=", 1) for pair in flags["update-env-vars"].split(","))
        assert env == {
            "FUNCTION_SOURCE": entry["source"].strip('"'),
            "FUNCTION_TARGET": target,
            "FUNCTION_USE_ASGI": entry["asgi"],
        }
        # Terraform owns who may invoke each service (iam.tf): run.developer could not set it anyway.
        assert set(flags) == {"region", "image", "service-account", "update-env-vars"}, name
    text = (ROOT / "cloudbuild.yaml").read_text()
    assert not re.search(r"allow-unauthenticated|add-iam-policy-binding|set-iam-policy", text)


@pytest.mark.parametrize("name", CLOUDBUILD_FILES)
def test_cloudbuild_substitutions_have_defaults_and_every_step_image_is_pinned_by_digest(name: str) -> None:
    build = _cloudbuild(name)
    used = set(re.findall(r"\$\{(_[A-Z_]+)\}", (ROOT / name).read_text()))
    assert used <= set(build["substitutions"]), f"substitutions without a default: {used - set(build['substitutions'])}"
    for step in build["steps"]:
        image = step["name"]
        found = re.fullmatch(r"\$\{(_[A-Z_]+)\}", image)
        image = build["substitutions"][found.group(1)] if found else image
        assert DIGEST.fullmatch(image), f"{name}, step {step['id']}: {image} is not NAME:TAG@sha256:DIGEST"


def test_the_base_and_builder_images_are_pinned_alike_everywhere() -> None:
    assert pins.problems() == []
    pinned = pins.references()
    assert {file for file, *_ in pinned} == {"Dockerfile", *CLOUDBUILD_FILES}
    arg = next(line for line in _dockerfile_lines() if line.startswith("ARG PYTHON_IMAGE="))
    assert DIGEST.fullmatch(arg.split("=", 1)[1])
    assert all(line.split()[1] == "${PYTHON_IMAGE}" for line in _dockerfile_lines() if line.upper().startswith("FROM "))


def test_pin_images_rewrites_each_moved_digest_and_keeps_the_tag(tmp_path: Path) -> None:
    for name in pins.PINNED_FILES:
        (tmp_path / name).write_text((ROOT / name).read_text())
    asked: list[str] = []

    def resolve(image: str) -> str:
        asked.append(image)
        return (
            "sha256:" + "a" * 64
            if image.startswith("python:")
            else {f"{n}:{t}": d for _, n, t, d in pins.references(ROOT)}[image]
        )

    moved = pins.update(resolve, tmp_path)

    assert len(moved) == 1
    assert moved[0].startswith("python:3.11-slim-bookworm sha256:")
    assert sorted(asked) == sorted({f"{n}:{t}" for _, n, t, _ in pins.references(ROOT)})
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:" + "a" * 64 in (tmp_path / "Dockerfile").read_text()
    for name in CLOUDBUILD_FILES:
        assert (tmp_path / name).read_text() == (ROOT / name).read_text()
    assert pins.problems(tmp_path) == []


def test_the_ci_build_records_the_pushed_digest_before_its_tests_run() -> None:
    build = _cloudbuild("cloudbuild.ci.yaml")
    assert build["serviceAccount"].endswith("/relay-ci@$PROJECT_ID.iam.gserviceaccount.com")
    assert build["logsBucket"] == "gs://$PROJECT_ID-relay-ci-logs"  # cicd.tf's bucket: no logging role needed
    assert "relay-ci" in build["tags"]  # what relay deploy's `gcloud builds list` filters on
    ids = [step["id"] for step in build["steps"]]
    assert ids == ["build", "push", "test"]
    push, test = build["steps"][1], build["steps"][2]
    # index 1: cloudbuild.yaml and relay deploy read results.buildStepOutputs[1]
    assert '"$$BUILDER_OUTPUT/output"' in push["args"][-1]
    assert "RepoDigests" in push["args"][-1]
    assert test["waitFor"] == ["push"]
    # No `images:`: Cloud Build would push the tag again after the tests, from whatever they left tagged.
    assert "images" not in build


def test_the_deploy_build_runs_gcloud_alone_as_the_deployer_and_checks_the_ci_build() -> None:
    build = _cloudbuild()
    assert build["serviceAccount"].endswith("/relay-deployer@$PROJECT_ID.iam.gserviceaccount.com")
    assert {step["name"] for step in build["steps"]} == {"${_CLI_IMAGE}"}
    text = "\n".join(_step_strings(build))
    assert not re.search(r"(?<![\w./-])(make|pip3?|npm|npx|apt-get|docker|python3?)(?=\s)", text)
    resolve = build["steps"][0]
    assert resolve["id"] == "resolve"
    script = resolve["args"][-1]
    assert "results.buildStepOutputs[1]" in script
    assert '"$$status" == SUCCESS' in script
    assert "relay-ci@$PROJECT_ID.iam.gserviceaccount.com" in script
    assert "${_REGION}-docker\\.pkg\\.dev/$PROJECT_ID/${_REPOSITORY}/relay@sha256:[0-9a-f]{64}" in script


# ---- Dockerfile ----


def _dockerfile_lines() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_copies_only_paths_that_exist_and_are_not_docker_ignored() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    copied = []
    for line in _dockerfile_lines():
        if not line.upper().startswith("COPY ") or "--from=" in line:
            continue
        words = [word for word in line.split()[1:] if not word.startswith("--")]
        copied.extend(words[:-1])
    assert copied, "the Dockerfile copies nothing"
    for path in copied:
        assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
        assert f"!{path}" in ignore, f".dockerignore leaves out {path}"


def test_dockerfile_final_stage_runs_as_non_root_without_build_tools() -> None:
    lines = _dockerfile_lines()
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    final = lines[last_from:]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert not any("build-essential" in line or "gcc" in line for line in final)
    assert any("--from=builder" in line for line in final)


def test_dockerfile_command_is_relays_server_in_exec_form() -> None:
    """replicate_relay.serve reads PORT and the FUNCTION_* variables itself (tests/unit/test_serve.py); exec form
    makes it PID 1, so SIGTERM reaches gunicorn without a shell in between."""
    cmd = next(line for line in _dockerfile_lines() if line.upper().startswith("CMD "))
    assert json.loads(cmd[len("CMD ") :]) == ["python", "-m", "replicate_relay.serve"]


def test_app_pull_subscriptions_default_to_none_and_read_job_events_with_a_dead_letter_and_no_expiry() -> None:
    variable = _variables()["app_pull_subscriptions"]
    assert (variable["type"], variable["default"]) == ("${map(list(string))}", {})
    app = _resource("google_pubsub_subscription", "app")
    assert app["for_each"] == "${local.app_subscriptions}"
    assert app["topic"] == "${google_pubsub_topic.topic[local.job_events_topic].id}"
    assert "push_config" not in app  # pulled by the app (replicate_relay.consumer), not pushed
    assert _block(app, "expiration_policy")["ttl"] == ""
    assert _block(app, "retry_policy")["minimum_backoff"]
    dead_letter = _block(app, "dead_letter_policy")
    assert dead_letter["dead_letter_topic"] == "${google_pubsub_topic.app_dead_letter[each.key].id}"
    kept = _resource("google_pubsub_subscription", "app_dead_letter")
    assert kept["topic"] == "${google_pubsub_topic.app_dead_letter[each.key].id}"
    assert _block(kept, "expiration_policy")["ttl"] == ""
    # The Pub/Sub service agent may move messages to each app's dead-letter topic.
    publisher = _resource("google_pubsub_topic_iam_member", "pubsub_agent_publishes_app_dead_letters")
    forwarder = _resource("google_pubsub_subscription_iam_member", "pubsub_agent_forwards_from_app")
    assert publisher["member"] == forwarder["member"] == "${local.pubsub_service_agent}"


def test_each_app_may_consume_its_own_subscription_only_and_never_publicly() -> None:
    grant = _resource("google_pubsub_subscription_iam_member", "app_consumes")
    assert grant["role"] == "roles/pubsub.subscriber"
    assert grant["subscription"] == "${google_pubsub_subscription.app[each.value.subscription].id}"
    assert grant["member"] == "${each.value.member}"
    [members] = [
        v["condition"] for v in _variables()["app_pull_subscriptions"]["validation"] if "member" in v["condition"]
    ]
    literal = re.search(r'regex\(("(?:[^"\\]|\\.)*")', members)
    assert literal, members
    pattern = re.compile(json.loads(literal.group(1)))
    assert pattern.search("serviceAccount:orders@p.iam.gserviceaccount.com")
    for member in ("allUsers", "allAuthenticatedUsers", "orders@p.iam.gserviceaccount.com"):
        assert not pattern.search(member), member


# ---- job-events pushed to apps ----


def _validation_pattern(variable: str, needle: str) -> re.Pattern[str]:
    """The regex literal of the variable's validation whose condition mentions `needle`."""
    [condition] = [v["condition"] for v in _variables()[variable]["validation"] if needle in v["condition"]]
    literal = re.search(r'regex\(("(?:[^"\\]|\\.)*")', condition)
    assert literal, condition
    return re.compile(json.loads(literal.group(1)))


def test_app_event_endpoints_default_to_none_and_share_the_app_subscription_and_its_dead_letter() -> None:
    variable = _variables()["app_event_endpoints"]
    assert (variable["type"], variable["default"]) == ("${map(string)}", {})
    locals_ = _locals(TERRAFORM / "apps.tf")["app_subscriptions"]
    assert "var.app_pull_subscriptions" in locals_
    assert "var.app_event_endpoints" in locals_
    app = _resource("google_pubsub_subscription", "app")
    assert app["for_each"] == "${local.app_subscriptions}"
    assert app["topic"] == "${google_pubsub_topic.topic[local.job_events_topic].id}"
    # Pulled and pushed app subscriptions are one resource: every dead-letter piece covers both.
    for rtype, name in [
        ("google_pubsub_topic", "app_dead_letter"),
        ("google_pubsub_subscription", "app_dead_letter"),
        ("google_pubsub_topic_iam_member", "pubsub_agent_publishes_app_dead_letters"),
        ("google_pubsub_subscription_iam_member", "pubsub_agent_forwards_from_app"),
    ]:
        assert _resource(rtype, name)["for_each"] == "${local.app_subscriptions}", f"{rtype}.{name}"
    [dynamic] = [entry["push_config"] for entry in app["dynamic"]]
    assert dynamic["for_each"] == "${each.value.push_endpoint == null ? [] : [each.value.push_endpoint]}"
    # A name in both variables would make one silently replace the other in the merge.
    [precondition] = _block(app, "lifecycle")["precondition"]
    assert (
        "setintersection(keys(var.app_pull_subscriptions), keys(var.app_event_endpoints))"
        in (precondition["condition"])
    )


def test_app_pushes_are_signed_by_their_own_account_for_the_apps_own_url() -> None:
    oidc = _block(_push_config(_resource("google_pubsub_subscription", "app")) or {}, "oidc_token")
    assert oidc["service_account_email"] == "${google_service_account.app_push.email}"
    assert oidc["audience"] == "${push_config.value}"  # the push endpoint: each app's own
    assert _resource("google_service_account", "app_push")["account_id"] == "relay-app-push"
    # Pub/Sub mints its tokens, and the account is granted nothing else anywhere in the module.
    mints = _resource("google_service_account_iam_member", "pubsub_agent_mints_app_push_tokens")
    assert mints["service_account_id"] == "${google_service_account.app_push.name}"
    assert (mints["role"], mints["member"]) == ("roles/iam.serviceAccountTokenCreator", "${local.pubsub_service_agent}")
    granted = [
        f"{rtype}.{name}"
        for rtype, name, body in _resources()
        if re.search(r"_iam_(member|binding)$", rtype) and "app_push" in str(body.get("member", ""))
    ]
    assert granted == []
    depends = _resource("google_pubsub_subscription", "app")["depends_on"]
    assert "${google_service_account_iam_member.pubsub_agent_mints_app_push_tokens}" in depends


def test_app_event_endpoints_take_https_urls_only_and_pubsub_names() -> None:
    url = _validation_pattern("app_event_endpoints", "url")
    for good in (
        "https://orders.example.com/relay/job-events",
        "https://orders-abc-uc.a.run.app",
        "https://h:8443/p?q=1",
    ):
        assert url.search(good), good
    for bad in (
        "http://orders.example.com/relay",
        "orders.example.com/relay",
        "https://user:secret@orders.example.com/",
        "https://orders.example.com/relay#frag",
        "https://",
        "ftp://orders.example.com",
        "https://orders.example.com/a b",
    ):
        assert not url.search(bad), bad
    names = _validation_pattern("app_event_endpoints", "name")
    assert names.pattern == _validation_pattern("app_pull_subscriptions", "name").pattern
    assert names.search("orders-app")
    for bad in ("ab", "1orders", "orders app"):
        assert not names.search(bad), bad


def test_outputs_list_app_push_subscriptions_and_the_account_apps_check() -> None:
    outputs = {_unquote(k): v for block in _parse(TERRAFORM / "outputs.tf")["output"] for k, v in block.items()}
    pushed = outputs["app_event_push_subscriptions"]["value"]
    for field in ("subscription", "endpoint", "audience", "dead_letter", "if length(subscription.push_config) > 0"):
        assert field in pushed, field
    assert "if length(subscription.push_config) == 0" in outputs["app_pull_subscriptions"]["value"]
    assert outputs["app_event_push_service_account"]["value"] == "${google_service_account.app_push.email}"


def test_the_local_stack_gives_app_subscriptions_terraforms_retry_and_dead_letter_settings() -> None:
    from replicate_relay import topology  # noqa: PLC0415

    app = _resource("google_pubsub_subscription", "app")
    retry = _block(app, "retry_policy")
    assert retry["minimum_backoff"] == f"{topology.APP_MINIMUM_BACKOFF_SECONDS}s"
    assert retry["maximum_backoff"] == f"{topology.APP_MAXIMUM_BACKOFF_SECONDS}s"
    assert app["ack_deadline_seconds"] == topology.APP_ACK_DEADLINE_SECONDS
    attempts = _variables()["app_subscription_max_delivery_attempts"]["default"]
    assert attempts == topology.APP_MAX_DELIVERY_ATTEMPTS
    assert _resource("google_pubsub_topic", "app_dead_letter")["name"] == "${each.key}-dead-letter"
    assert topology.app_endpoint("orders-app", "https://o.example.com/").dead_letter == "orders-app-dead-letter"
