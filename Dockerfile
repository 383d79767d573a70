# kuadeploy image. Works on the official image (default) and on the local debootstrap base
# that scripts/build-image makes (python3 at /usr/bin, venv via `python3 -m venv`).
# Builds with the legacy builder (DOCKER_BUILDKIT=0) as well as BuildKit.
#
# Offline: when the build context has a wheelhouse `wheels/` (scripts/build-image makes one),
# every dependency and the build backend come from it with `pip install --no-index`.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
# `wheel[s]` matches nothing when there is no wheelhouse; pyproject.toml keeps COPY valid.
COPY pyproject.toml wheel[s] /wheelhouse/
# Dependencies first (their layer survives source changes).
RUN set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
      echo "installing from the wheelhouse, no network"; \
      echo "--no-index --find-links /wheelhouse" > /wheelhouse/pip-args; \
    else \
      echo "no wheelhouse: installing from the package index"; \
      : > /wheelhouse/pip-args; \
    fi; \
    python3 -c 'import tomllib; p = tomllib.load(open("/wheelhouse/pyproject.toml", "rb")); print("\n".join(p["project"]["dependencies"]))' \
      > /wheelhouse/requirements.txt; \
    /opt/venv/bin/pip install $(cat /wheelhouse/pip-args) -r /wheelhouse/requirements.txt
COPY . /src
RUN /opt/venv/bin/pip install $(cat /wheelhouse/pip-args) --no-deps /src \
    && /opt/venv/bin/python -c 'import kuadeploy'

FROM ${BASE_IMAGE}
# The user the service runs as. To reach the Docker socket it needs the socket's group:
# `docker run --group-add "$(stat -c %g /var/run/docker.sock)"`, or `group_add` in compose.
RUN groupadd --gid 10001 kua \
    && useradd --uid 10001 --gid kua --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin kua \
    && mkdir -p /app/data \
    && chown kua:kua /app/data
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    KUA_DATA_DIR=/app/data \
    KUA_LISTEN=0.0.0.0:8080
WORKDIR /app
VOLUME ["/app/data"]
EXPOSE 8080
# Probes the port KUA_LISTEN names (8080 unless overridden), always on 127.0.0.1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('KUA_LISTEN', '0.0.0.0:8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
USER kua
# Last, so a new SHA reuses every layer above.
ARG GIT_SHA=unknown
ENV KUA_GIT_SHA=${GIT_SHA}
LABEL org.opencontainers.image.title="kuadeploy" \
      org.opencontainers.image.revision="${GIT_SHA}"
ENTRYPOINT ["kuadeploy"]
CMD ["serve"]
