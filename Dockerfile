# syntax=docker/dockerfile:1
# One image for every Relay service. The Cloud Run service chooses the function with
# FUNCTION_SOURCE / FUNCTION_TARGET (and FUNCTION_USE_ASGI=true for the receiver):
#   receiver         FUNCTION_SOURCE=receiver/main.py FUNCTION_TARGET=receive FUNCTION_USE_ASGI=true
#   job-status       FUNCTION_SOURCE=handlers/main.py FUNCTION_TARGET=job_status
#   archive-outputs  FUNCTION_SOURCE=handlers/main.py FUNCTION_TARGET=archive_outputs
#   reconciler       FUNCTION_SOURCE=handlers/main.py FUNCTION_TARGET=reconcile
#   status-page      FUNCTION_SOURCE=replicate_relay/ops/statuspage.py FUNCTION_TARGET=status_page (private)
#   api              FUNCTION_SOURCE=api/main.py FUNCTION_TARGET=api

# Pinned by digest (`make pin-images` updates it; docs/DEVELOP.md): the tag moves, the digest does not.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# ---- builder: compilers are here only, for any wheel that has to be built from source ----
FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.txt /tmp/requirements.txt
# Every distribution checked against its hash in requirements.txt (pip-compile --generate-hashes).
RUN pip install --require-virtualenv --require-hashes -r /tmp/requirements.txt \
    && pip uninstall --yes pip setuptools
# pip and setuptools only install: nothing the services import needs them (~25 MB). Removed here, in the
# builder, they weigh nothing in the final image, which copies only the venv as it ends up.

# ---- final: the venv and the code the services import, no build tools, not root ----
# What runs on Cloud Run, and nothing else: the services (receiver/, handlers/, api/) and the part of
# replicate_relay/ they import (replicate_relay/ops/ for the status page); of infra/, the topology the
# handlers read. The tooling (dev stack, simulator, trace viewer, schema generator, test helpers, the
# relay command line) stays out through .dockerignore, so that no layer holds it;
# tests/image/test_contents.py fails if it comes back, or if a module no service imports does.
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin relay
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root receiver/ /app/receiver/
COPY --chown=root:root handlers/ /app/handlers/
COPY --chown=root:root api/ /app/api/
COPY --chown=root:root replicate_relay/ /app/replicate_relay/
COPY --chown=root:root infra/topology.yaml /app/infra/topology.yaml
# Compiled at build time: a cold start would otherwise compile every module of the app again, and
# could not keep the result (PYTHONDONTWRITEBYTECODE; the root may be read-only).
RUN python -m compileall -q /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080 \
    FUNCTION_SIGNATURE_TYPE=http \
    FUNCTION_USE_ASGI=false \
    ENABLE_GCS_PYTHON_CLIENT_OTEL_TRACES=true \
    DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA=true
# No FUNCTION_SOURCE / FUNCTION_TARGET default: a service that does not set them stops at start
# naming the variable, instead of serving another service's function.
# google-cloud-storage traces its uploads only when the first is set before it is imported; the
# second stops it fetching bucket metadata for span attributes (see replicate_relay/telemetry_setup.py).
USER 10001:10001
EXPOSE 8080
# replicate_relay.serve is PID 1 (exec form): functions-framework's app under gunicorn with Cloud Run's settings
# (no control socket, heartbeat files in /dev/shm, 8 s to finish requests after SIGTERM; see
# replicate_relay/serve.py). Each worker's exit flushes its telemetry (replicate_relay.telemetry registers that with atexit).
CMD ["python", "-m", "replicate_relay.serve"]
