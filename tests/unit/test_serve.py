"""replicate_relay.serve: the image's entry point (settings from the environment, gunicorn's options, /health)."""

from __future__ import annotations

import subprocess
import sys

import flask
import pytest

from replicate_relay.config import ConfigError
from replicate_relay.serve import GRACEFUL_SECONDS, HEALTH_PATH, ServeSettings, flask_health, gunicorn_options

BASE = {"FUNCTION_TARGET": "job_status", "FUNCTION_SOURCE": "handlers/main.py"}


def test_settings_come_from_the_variables_cloud_run_and_the_deployment_set() -> None:
    settings = ServeSettings.from_env({**BASE, "PORT": "9000", "FUNCTION_USE_ASGI": "true", "HOST": "127.0.0.1"})
    assert settings == ServeSettings(
        target="job_status", source="handlers/main.py", asgi=True, host="127.0.0.1", port=9000
    )


def test_settings_default_to_cloud_runs_port_on_every_interface() -> None:
    settings = ServeSettings.from_env(BASE)
    assert (settings.host, settings.port, settings.asgi, settings.signature_type) == ("0.0.0.0", 8080, False, "http")  # noqa: S104


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"FUNCTION_SOURCE": "handlers/main.py"}, "FUNCTION_TARGET"),
        ({"FUNCTION_TARGET": "job_status"}, "FUNCTION_SOURCE"),
        ({**BASE, "FUNCTION_USE_ASGI": "yes please"}, "FUNCTION_USE_ASGI"),
        ({**BASE, "PORT": "http"}, "PORT"),
    ],
)
def test_a_missing_or_malformed_setting_names_its_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        ServeSettings.from_env(environ)


def test_gunicorn_runs_without_a_control_socket_and_stops_before_cloud_runs_kill() -> None:
    options = gunicorn_options(asgi=False, worker_tmp_dir="/")
    assert options["control_socket_disable"] is True
    assert GRACEFUL_SECONDS < 10
    assert options["graceful_timeout"] == GRACEFUL_SECONDS
    assert options["worker_tmp_dir"] == "/"
    assert "worker_class" not in options  # functions-framework's threads worker for Flask


def test_asgi_functions_run_in_the_worker_whose_sigterm_exit_runs_exit_handlers() -> None:
    assert gunicorn_options(asgi=True)["worker_class"] == "replicate_relay.serve.UvicornWorker"


def test_a_missing_worker_tmp_dir_is_left_to_gunicorns_default() -> None:
    assert "worker_tmp_dir" not in gunicorn_options(asgi=False, worker_tmp_dir="/no/such/folder")


def test_the_signal_uvicorn_raises_again_after_its_shutdown_exits_normally_with_exit_handlers_run() -> None:
    """What uvicorn does once it has shut down: raise the caught SIGTERM again (replicate_relay/serve.py)."""
    program = (
        "import atexit, signal\n"
        "from replicate_relay.serve import UvicornWorker, _exit_normally\n"
        "atexit.register(print, 'exit handlers ran')\n"
        "signal.signal(signal.SIGTERM, _exit_normally)\n"
        "signal.raise_signal(signal.SIGTERM)\n"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, a program written above
        [sys.executable, "-c", program], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "exit handlers ran"


@pytest.mark.parametrize(("method", "status"), [("GET", 200), ("HEAD", 200), ("POST", 405)])
def test_health_answers_get_and_head_only(method: str, status: int) -> None:
    app = flask.Flask(__name__)
    with app.test_request_context(HEALTH_PATH, method=method):
        response = flask_health(flask.request)
    assert response is not None
    assert response.status_code == status


def test_every_other_path_is_left_to_the_function() -> None:
    app = flask.Flask(__name__)
    with app.test_request_context("/", method="GET"):
        assert flask_health(flask.request) is None
