# syntax=docker/dockerfile:1
# fluxrelay image: one image, two processes. The entrypoint is fluxrelay-receiver; the
# reconciler Deployment overrides the command with fluxrelay-reconciler (deploy/base).
# Not built by this repository's CI (no container engine there); tests/deploy checks its
# structure. Pin the base image by digest too when you build releases.

# --- build: wheels for fluxrelay and every dependency -------------------------------------
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY schemas ./schemas
COPY receiver ./receiver
COPY reconciler ./reconciler
RUN pip wheel --wheel-dir /wheels .

# --- runtime: the wheels installed into a virtualenv, run as an unprivileged user ----------
FROM python:3.11.11-slim-bookworm AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/fluxrelay/bin:$PATH
# The wheels are mounted, not copied, so they never end up in a layer. pip compiles the
# bytecode at install time, so nothing is written at run time (read-only root filesystem).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/fluxrelay \
    && /opt/fluxrelay/bin/pip install --no-index --find-links /wheels fluxrelay \
    && /opt/fluxrelay/bin/pip uninstall -y pip
# 65532: the conventional "nonroot" uid/gid; the Deployments set the same runAsUser.
USER 65532:65532
WORKDIR /tmp
EXPOSE 9292 9090
# Exec form: no shell is involved at run time.
ENTRYPOINT ["/opt/fluxrelay/bin/fluxrelay-receiver"]
