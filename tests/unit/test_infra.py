"""Offline checks of the deployment layer (issue #6): Terraform, cloudbuild.yaml and the Dockerfile.

Nothing here reaches Google: Terraform is parsed with python-hcl2, not planned. The checks hold
production to the local topology (infra/topology.yaml) and to the security invariants.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "infra" / "terraform"
TOPOLOGY = yaml.safe_load((ROOT / "infra" / "topology.yaml").read_text())
TF_FILES = sorted(TERRAFORM.glob("*.tf"))
_OPTIONS = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)


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


def _cloudbuild() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _step_strings(build: dict[str, Any]) -> list[str]:
    strings = []
    for step in build["steps"]:
        strings.extend(str(arg) for arg in step.get("args", []))
        if "script" in step:
            strings.append(str(step["script"]))
    return strings


# ---- Terraform parses ----


def test_the_terraform_module_has_every_expected_file() -> None:
    expected = {"versions.tf", "variables.tf", "main.tf", "iam.tf", "pubsub.tf", "storage.tf", "firestore.tf"}
    expected |= {"run.tf", "scheduler.tf", "secrets.tf", "monitoring.tf", "outputs.tf"}
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


def test_every_push_subscription_has_oidc_a_retry_policy_and_a_dead_letter_topic() -> None:
    subscriptions = [(name, body) for rtype, name, body in _resources() if rtype == "google_pubsub_subscription"]
    push_subscriptions = [(name, body) for name, body in subscriptions if "push_config" in body]
    assert push_subscriptions, "no push subscription found"
    # "${google_pubsub_topic.dead_letter[each.key].id}" -> "${google_pubsub_topic.dead_letter"
    pull_subscriptions = [body for _, body in subscriptions if "push_config" not in body]
    dead_letter_topics_with_subscriptions = {body["topic"].split("[")[0] for body in pull_subscriptions}
    for name, body in push_subscriptions:
        oidc = _block(_block(body, "push_config"), "oidc_token")
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
    for rtype, name, body in _resources():
        if not rtype.startswith("google_cloud_run_v2_service_iam_"):
            continue
        members = {body.get("member")} | set(body.get("members", []))
        if members & public_members:
            assert body["name"] == '${google_cloud_run_v2_service.service["receiver"].name}', f"{rtype}.{name}"


def test_only_the_receiver_accepts_traffic_from_the_internet() -> None:
    service = _resource("google_cloud_run_v2_service", "service")
    assert service["ingress"] == '${each.value.public ? "INGRESS_TRAFFIC_ALL" : "INGRESS_TRAFFIC_INTERNAL_ONLY"}'
    services = _parse(TERRAFORM / "run.tf")["locals"][0]["services"]
    assert services.count("public = true") == 1
    assert re.search(r"receiver = \{[^{}]*public = true", services)


def test_no_iam_grant_gives_owner_or_editor() -> None:
    forbidden = {"roles/owner", "roles/editor"}
    grants = [(t, n, b) for t, n, b in _resources() if re.search(r"_iam_(member|binding|policy)$", t)]
    assert grants, "no IAM grants found"
    for rtype, name, body in grants:
        roles = {body.get("role")} | set(re.findall(r"roles/[a-zA-Z.]+", str(body)))
        assert not roles & forbidden, f"{rtype}.{name} grants {roles & forbidden}"


# ---- cloudbuild.yaml ----


def test_cloudbuild_runs_only_makefile_targets_that_exist() -> None:
    targets = _makefile_targets()
    command = re.compile(r"(?:^|[;&|]\s*)make[ \t]+([\w-]+)", flags=re.MULTILINE)  # a command, not a package name
    invoked = [target for string in _step_strings(_cloudbuild()) for target in command.findall(string.strip())]
    assert invoked, "cloudbuild.yaml runs no make target"
    assert set(invoked) <= targets, f"unknown make targets: {set(invoked) - targets}"


def test_cloudbuild_refers_only_to_files_that_exist() -> None:
    pattern = re.compile(r"(?<![\w./$-])((?:[\w-]+/)*[\w.-]+\.(?:py|ya?ml|json|txt|toml|cfg)|Dockerfile)\b")
    referenced = {match for string in _step_strings(_cloudbuild()) for match in pattern.findall(string)}
    assert "Dockerfile" in referenced
    missing = sorted(path for path in referenced if not (ROOT / path).is_file())
    assert not missing, f"cloudbuild.yaml refers to missing files: {missing}"


def test_cloudbuild_deploys_functions_that_exist_in_their_sources() -> None:
    deployed = []
    for string in _step_strings(_cloudbuild()):
        source = re.search(r"FUNCTION_SOURCE=([^,\s]+)", string)
        target = re.search(r"FUNCTION_TARGET=([^,\s]+)", string)
        if source and target:
            deployed.append((source.group(1), target.group(1)))
    assert len(deployed) == 4, deployed
    for source, target in deployed:
        assert re.search(rf"^(async )?def {target}\(", (ROOT / source).read_text(), flags=re.MULTILINE), (
            f"{source} defines no function {target}"
        )


def test_cloudbuild_substitutions_have_defaults_and_the_image_uses_them() -> None:
    build = _cloudbuild()
    assert {"_REGION", "_REPOSITORY", "_TAG"} <= set(build["substitutions"])
    image = "${_REGION}-docker.pkg.dev/$PROJECT_ID/${_REPOSITORY}/relay:${_TAG}"
    assert image in build["images"]
    used = set(re.findall(r"\$\{(_[A-Z_]+)\}", (ROOT / "cloudbuild.yaml").read_text()))
    assert used <= set(build["substitutions"]), f"substitutions without a default: {used - set(build['substitutions'])}"


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


def test_dockerfile_command_honours_port_and_the_function_variables() -> None:
    cmd = next(line for line in _dockerfile_lines() if line.upper().startswith("CMD "))
    for needed in ("functions_framework", "$FUNCTION_SOURCE", "$FUNCTION_TARGET", "PORT", "--asgi", "exec "):
        assert needed in cmd, f"CMD lacks {needed}"
