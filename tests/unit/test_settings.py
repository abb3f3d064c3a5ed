"""receiver.settings and handlers.settings: typed configuration read from an environment dict."""

from __future__ import annotations

import base64
import traceback
from datetime import timedelta
from typing import Any

import pytest

from handlers.settings import HandlerSettings
from receiver.settings import DEFAULT_MAX_BODY_BYTES, ReceiverSettings
from replicate_relay.config import ConfigError
from replicate_relay.jobs import Policy
from replicate_relay.replicate_api import ModelRef
from replicate_relay.submit import SubmitSettings
from replicate_relay.webhooks import DEFAULT_TOLERANCE_SECONDS, parse_secret

SECRET = "whsec_" + base64.b64encode(b"settings-unit-test-secret-32byte").decode("ascii")
SECOND_SECRET = "whsec_" + base64.b64encode(b"the-second-secret-for-rotation!!").decode("ascii")
RECEIVER_ENV = {"RELAY_PROJECT": "unit-test-project", "RELAY_WEBHOOK_SECRETS": SECRET}
HANDLER_ENV = {"RELAY_PROJECT": "unit-test-project"}
UNSET = None


def receiver_error(**changes: str | None) -> ConfigError:
    """The ConfigError from RECEIVER_ENV with variables changed (None removes one)."""
    env = {**RECEIVER_ENV, **changes}
    with pytest.raises(ConfigError) as caught:
        ReceiverSettings.from_env({name: value for name, value in env.items() if value is not None})
    return caught.value


def each_value(bad: dict[str, list[str | None]]) -> list[Any]:
    """A (variable, value) case for each bad value of each variable (UNSET: the variable is missing)."""
    return [
        pytest.param(variable, value, id=f"{variable}={'unset' if value is UNSET else value}")
        for variable, values in bad.items()
        for value in values
    ]


def handler_error(**changes: str | None) -> ConfigError:
    env = {**HANDLER_ENV, **changes}
    with pytest.raises(ConfigError) as caught:
        HandlerSettings.from_env({name: value for name, value in env.items() if value is not None})
    return caught.value


def shown(error: BaseException) -> str:
    """Everything a log line or crash report could show of an error, chained causes included."""
    return "".join(traceback.format_exception(error)) + repr(error.__context__) + repr(error.__cause__)


# --- ReceiverSettings --------------------------------------------------------------------------


def test_receiver_defaults() -> None:
    settings = ReceiverSettings.from_env(RECEIVER_ENV)
    assert settings.project == "unit-test-project"
    assert settings.events_topic == "replicate-events"
    assert settings.topic_path == "projects/unit-test-project/topics/replicate-events"
    assert settings.signing_keys == (parse_secret(SECRET),)
    assert settings.tolerance_seconds == DEFAULT_TOLERANCE_SECONDS
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert settings.publish_deadline_seconds == 5.0
    assert (settings.failure_burst, settings.failure_per_second, settings.failure_max_clients) == (20, 1.0, 10_000)
    assert settings.trusted_proxy_hops == 0
    assert settings.log_level == "INFO"


def test_receiver_reads_every_variable() -> None:
    settings = ReceiverSettings.from_env(
        {
            **RECEIVER_ENV,
            "RELAY_EVENTS_TOPIC": "events-2",
            "RELAY_WEBHOOK_TOLERANCE_SECONDS": "60",
            "RELAY_MAX_BODY_BYTES": "9000000",
            "RELAY_PUBLISH_DEADLINE_SECONDS": "2.5",
            "RELAY_FAILURE_BURST": "5",
            "RELAY_FAILURE_PER_SECOND": "0.25",
            "RELAY_FAILURE_MAX_CLIENTS": "7",
            "RELAY_TRUSTED_PROXY_HOPS": "1",
            "RELAY_LOG_LEVEL": "debug",
        }
    )
    assert settings.topic_path == "projects/unit-test-project/topics/events-2"
    assert settings.tolerance_seconds == 60
    assert settings.max_body_bytes == 9_000_000
    assert settings.publish_deadline_seconds == 2.5
    assert (settings.failure_burst, settings.failure_per_second, settings.failure_max_clients) == (5, 0.25, 7)
    assert settings.trusted_proxy_hops == 1
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize("name", ["GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT"])
def test_project_falls_back_to_googles_variables(name: str) -> None:
    env = {"RELAY_WEBHOOK_SECRETS": SECRET, name: "from-google"}
    assert ReceiverSettings.from_env(env).project == "from-google"


def test_relay_project_wins_over_googles_variable() -> None:
    env = {**RECEIVER_ENV, "GOOGLE_CLOUD_PROJECT": "from-google"}
    assert ReceiverSettings.from_env(env).project == "unit-test-project"


@pytest.mark.parametrize(
    "separator", [",", " ", ", ", "\n", "\t", " ,  "], ids=["comma", "space", "comma-space", "newline", "tab", "mixed"]
)
def test_several_secrets_are_parsed_in_order(separator: str) -> None:
    env = {**RECEIVER_ENV, "RELAY_WEBHOOK_SECRETS": f" {SECOND_SECRET}{separator}{SECRET}, "}
    assert ReceiverSettings.from_env(env).signing_keys == (parse_secret(SECOND_SECRET), parse_secret(SECRET))


def test_secret_without_the_whsec_prefix_is_accepted() -> None:
    env = {**RECEIVER_ENV, "RELAY_WEBHOOK_SECRETS": SECRET.removeprefix("whsec_")}
    assert ReceiverSettings.from_env(env).signing_keys == (parse_secret(SECRET),)


BAD_RECEIVER_VALUES: dict[str, list[str | None]] = {
    "RELAY_WEBHOOK_SECRETS": [UNSET, "", " , "],
    "RELAY_WEBHOOK_TOLERANCE_SECONDS": ["five minutes", "300.5", "0"],
    "RELAY_MAX_BODY_BYTES": ["9000001", "100000000", "1023", "4MB"],
    "RELAY_PUBLISH_DEADLINE_SECONDS": ["soon", "0"],
    "RELAY_FAILURE_BURST": ["0"],
    "RELAY_FAILURE_PER_SECOND": ["-1", "nan"],
    "RELAY_FAILURE_MAX_CLIENTS": ["0"],
    "RELAY_TRUSTED_PROXY_HOPS": ["-1"],
    "RELAY_PROJECT": [UNSET],
}


@pytest.mark.parametrize(("variable", "value"), each_value(BAD_RECEIVER_VALUES))
def test_bad_receiver_variable_raises_config_error_naming_it(variable: str, value: str | None) -> None:
    assert variable in str(receiver_error(**{variable: value}))


def test_max_body_of_exactly_9000000_is_accepted() -> None:
    env = {**RECEIVER_ENV, "RELAY_MAX_BODY_BYTES": "9000000"}
    assert ReceiverSettings.from_env(env).max_body_bytes == 9_000_000


@pytest.mark.parametrize(
    "bad_secret",
    [
        pytest.param("whsec_Zm9vYmFy!!notbase64", id="not-base64"),
        pytest.param("whsec_c2V0dGluZ3MtdW5pdC10ZXN0LXNlY3JldC0zMmJ5dGU", id="bad-padding"),
        pytest.param("whsec_" + base64.b64encode(b"only-twelve!").decode(), id="too-short"),
    ],
)
@pytest.mark.parametrize("alone", [True, False], ids=["alone", "beside-a-good-secret"])
def test_malformed_secret_is_named_but_never_shown(bad_secret: str, alone: bool) -> None:
    value = bad_secret if alone else f"{SECRET},{bad_secret}"
    error = receiver_error(RELAY_WEBHOOK_SECRETS=value)
    assert "RELAY_WEBHOOK_SECRETS" in str(error)
    text = shown(error)
    for part in (bad_secret, bad_secret.removeprefix("whsec_"), SECRET.removeprefix("whsec_")):
        assert part not in text


def test_settings_repr_never_shows_a_secret() -> None:
    settings = ReceiverSettings.from_env(RECEIVER_ENV)
    text = repr(settings) + str(settings)
    assert SECRET.removeprefix("whsec_") not in text
    assert repr(settings.signing_keys[0].key) not in text


def test_old_workers_replicate_webhook_secret_alone_is_accepted() -> None:
    env = {**RECEIVER_ENV, "RELAY_WEBHOOK_SECRETS": UNSET, "REPLICATE_WEBHOOK_SECRET": SECRET}
    settings = ReceiverSettings.from_env({name: value for name, value in env.items() if value is not None})
    assert settings.signing_keys == (parse_secret(SECRET),)


@pytest.mark.parametrize(
    "legacy", [SECRET, SECRET.removeprefix("whsec_"), f" {SECRET} "], ids=["same", "without-prefix", "spaces"]
)
def test_both_secret_variables_holding_the_same_secret_are_accepted(legacy: str) -> None:
    settings = ReceiverSettings.from_env({**RECEIVER_ENV, "REPLICATE_WEBHOOK_SECRET": legacy})
    assert settings.signing_keys == (parse_secret(SECRET),)


@pytest.mark.parametrize(
    "relay_secrets", [SECOND_SECRET, f"{SECRET} {SECOND_SECRET}"], ids=["other-secret", "superset-for-rotation"]
)
def test_both_secret_variables_differing_is_a_config_error_naming_both_and_showing_neither(relay_secrets: str) -> None:
    error = receiver_error(RELAY_WEBHOOK_SECRETS=relay_secrets, REPLICATE_WEBHOOK_SECRET=SECRET)
    assert "RELAY_WEBHOOK_SECRETS" in str(error)
    assert "REPLICATE_WEBHOOK_SECRET" in str(error)
    text = shown(error)
    for secret in (SECRET, SECOND_SECRET):
        assert secret.removeprefix("whsec_") not in text


def test_neither_secret_variable_set_names_both() -> None:
    error = receiver_error(RELAY_WEBHOOK_SECRETS=UNSET)
    assert "RELAY_WEBHOOK_SECRETS" in str(error)
    assert "REPLICATE_WEBHOOK_SECRET" in str(error)


def test_malformed_old_worker_secret_is_named_by_its_own_variable() -> None:
    error = receiver_error(RELAY_WEBHOOK_SECRETS=UNSET, REPLICATE_WEBHOOK_SECRET="whsec_Zm9vYmFy!!notbase64")
    assert "REPLICATE_WEBHOOK_SECRET:" in str(error)


# --- HandlerSettings ---------------------------------------------------------------------------


def test_handler_defaults() -> None:
    settings = HandlerSettings.from_env(HANDLER_ENV)
    assert settings.project == "unit-test-project"
    assert settings.policy == Policy()
    assert settings.event_retention == timedelta(days=30)
    assert settings.log_level == "INFO"


def test_handler_reads_every_variable() -> None:
    settings = HandlerSettings.from_env(
        {
            **HANDLER_ENV,
            "RELAY_COALESCE_SECONDS": "2.5",
            "RELAY_LOGS_TAIL_CHARS": "100",
            "RELAY_INLINE_VALUE_BYTES": "4096",
            "RELAY_EVENT_RETENTION_DAYS": "7",
            "RELAY_LOG_LEVEL": "warning",
        }
    )
    assert settings.policy == Policy(
        coalesce_window=timedelta(seconds=2.5), logs_tail_chars=100, inline_value_bytes=4096
    )
    assert settings.event_retention == timedelta(days=7)
    assert settings.log_level == "WARNING"


def test_reconciler_polls_adopted_jobs_after_their_own_shorter_threshold() -> None:
    env = {
        **HANDLER_ENV,
        "FUNCTION_TARGET": "reconcile",
        "REPLICATE_API_TOKEN": "r8_test",
        "RELAY_RECONCILE_INVOKER": "relay-scheduler@unit-test-project.iam.gserviceaccount.com",
    }
    defaults = HandlerSettings.from_env(env).reconciler
    assert defaults is not None
    assert (defaults.run.quiet_after, defaults.run.adopted_after) == (timedelta(minutes=10), timedelta(seconds=60))
    tuned = HandlerSettings.from_env({**env, "RELAY_RECONCILE_ADOPTED_SECONDS": "15"}).reconciler
    assert tuned is not None
    assert tuned.run.adopted_after == timedelta(seconds=15)
    error = handler_error(**env, RELAY_RECONCILE_ADOPTED_SECONDS="0")
    assert "RELAY_RECONCILE_ADOPTED_SECONDS" in str(error)


def test_handlers_do_not_need_the_webhook_secret() -> None:
    # Handlers read events from Pub/Sub, never from Replicate, so a missing secret must not stop them.
    assert "RELAY_WEBHOOK_SECRETS" not in HANDLER_ENV
    assert HandlerSettings.from_env(HANDLER_ENV).project == "unit-test-project"


BAD_HANDLER_VALUES: dict[str, list[str | None]] = {
    "RELAY_COALESCE_SECONDS": ["soon", "-1", "nan"],
    "RELAY_LOGS_TAIL_CHARS": ["many", "-5"],
    "RELAY_INLINE_VALUE_BYTES": ["1023", "600000"],
    "RELAY_EVENT_RETENTION_DAYS": ["0", "a month"],
    "RELAY_PROJECT": [UNSET],
}


@pytest.mark.parametrize(("variable", "value"), each_value(BAD_HANDLER_VALUES))
def test_bad_handler_variable_raises_config_error_naming_it(variable: str, value: str | None) -> None:
    assert variable in str(handler_error(**{variable: value}))


def test_infinite_coalesce_window_raises_config_error_naming_it() -> None:
    assert "RELAY_COALESCE_SECONDS" in str(handler_error(RELAY_COALESCE_SECONDS="inf"))


def test_retention_beyond_what_timedelta_holds_raises_config_error_naming_it() -> None:
    assert "RELAY_EVENT_RETENTION_DAYS" in str(handler_error(RELAY_EVENT_RETENTION_DAYS="1000000000"))


# --- SubmitSettings: the polling worker's variables ------------------------------------------------

SUBMIT_ENV = {"REPLICATE_API_TOKEN": "r8_test", "RELAY_WEBHOOK_URL": "https://relay.example.com/"}
RESTORE = ModelRef.parse("flux-kontext-apps/restore-image")


def test_old_workers_model_output_format_and_safety_tolerance_give_submit_its_defaults() -> None:
    settings = SubmitSettings.from_env(
        {
            **SUBMIT_ENV,
            "REPLICATE_MODEL": "flux-kontext-apps/restore-image",
            "REPLICATE_OUTPUT_FORMAT": "jpg",
            "REPLICATE_SAFETY_TOLERANCE": "2",
        }
    )
    assert settings.default_model == "flux-kontext-apps/restore-image"
    given = {"input_image": "https://example.com/a.jpg", "seed": 7}
    assert settings.input_for(RESTORE, given) == {**given, "output_format": "jpg", "safety_tolerance": 2}
    explicit = {**given, "output_format": "png", "safety_tolerance": 0}
    assert settings.input_for(RESTORE, explicit) == explicit
    # Another model does not get the old worker's inputs.
    assert settings.input_for(ModelRef.parse("acme/other"), given) == given


def test_without_the_old_workers_variables_submit_adds_no_inputs() -> None:
    settings = SubmitSettings.from_env(SUBMIT_ENV)
    assert settings.default_model == "flux-kontext-apps/restore-image"
    assert settings.input_for(RESTORE, {"seed": 1}) == {"seed": 1}


def test_replicate_model_alone_is_the_default_model_and_agreeing_with_relay_default_model_is_accepted() -> None:
    assert SubmitSettings.from_env({**SUBMIT_ENV, "REPLICATE_MODEL": "acme/old"}).default_model == "acme/old"
    both = {**SUBMIT_ENV, "REPLICATE_MODEL": "acme/old", "RELAY_DEFAULT_MODEL": "acme/old"}
    assert SubmitSettings.from_env(both).default_model == "acme/old"


@pytest.mark.parametrize(
    ("changes", "variables"),
    [
        pytest.param(
            {"REPLICATE_MODEL": "acme/old", "RELAY_DEFAULT_MODEL": "acme/new"},
            ["RELAY_DEFAULT_MODEL", "REPLICATE_MODEL"],
            id="models-differ",
        ),
        pytest.param({"REPLICATE_MODEL": "not-a-model"}, ["REPLICATE_MODEL"], id="model-malformed"),
        pytest.param({"REPLICATE_SAFETY_TOLERANCE": "high"}, ["REPLICATE_SAFETY_TOLERANCE"], id="tolerance-text"),
        pytest.param({"REPLICATE_SAFETY_TOLERANCE": "-1"}, ["REPLICATE_SAFETY_TOLERANCE"], id="tolerance-negative"),
    ],
)
def test_bad_old_worker_variable_raises_config_error_naming_it(changes: dict[str, str], variables: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        SubmitSettings.from_env({**SUBMIT_ENV, **changes})
    for variable in variables:
        assert variable in str(caught.value)


def test_submit_reads_relay_job_events_topic_as_the_handlers_do() -> None:
    """Where the job of a prediction Replicate refused is announced (`relay submit`, RelayClient.from_env)."""
    assert SubmitSettings.from_env(SUBMIT_ENV).job_events_topic == "job-events"
    other = {**SUBMIT_ENV, "RELAY_JOB_EVENTS_TOPIC": "jobs-done"}
    assert SubmitSettings.from_env(other).job_events_topic == "jobs-done"
