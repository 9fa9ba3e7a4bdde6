# clerk-convex-relay: one image, `relay serve` (gunicorn ingest + one delivery worker).
#
# BASE_IMAGE is an argument so CI, which cannot pull from Docker Hub, can build on a
# locally made stand-in (scripts/container-smoke.sh). Both stages use the same base: the
# venv built in the first stage points at that base's python and is copied as-is.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------
# Stage 1: build wheels. Compilers, caches and sources stay here, out of the final image.
FROM ${BASE_IMAGE} AS build

# No pip cache (it would only bloat the layer); no version check (it needs the network).
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# A venv, not the system site-packages: copying one directory gives the runtime stage
# exactly what was installed, and python3 (not python) exists on every Debian base.
RUN python3 -m venv /opt/venv

WORKDIR /src

# Dependencies before code: this layer is rebuilt only when pyproject.toml changes.
# setuptools cannot build the project wheel without the package sources, so the
# requirement list is read out of pyproject.toml (tomllib is stdlib in 3.11) and the
# dependencies are built and installed on their own.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > requirements.txt \
    && pip wheel --wheel-dir /wheels -r requirements.txt \
    && pip install --no-index --find-links /wheels -r requirements.txt

# Now the code, which changes on every commit; the wheel is small and built without
# touching the dependencies again.
COPY relay/ relay/
RUN pip wheel --no-deps --wheel-dir /dist .

# ---------------------------------------------------------------------------------------
# Stage 2: runtime. Only the venv and the project wheel come across.
FROM ${BASE_IMAGE} AS runtime

# Unbuffered so logs reach `docker logs`/Fly at once; no .pyc writes at run time (the
# venv is precompiled and not writable by the app user anyway). PORT and the database
# live here so `docker run` needs only the secrets; /data is the volume below.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PORT=8080 \
    RELAY_DATABASE_URL=sqlite:////data/relay.db

# The user the app runs as, and its data directory. A fixed uid keeps volume ownership
# stable across rebuilds and hosts; --no-log-init avoids a huge sparse lastlog file.
RUN groupadd --gid 10001 relay \
    && useradd --uid 10001 --gid relay --no-log-init --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin relay \
    && mkdir /data \
    && chown relay:relay /data

# The dependencies, in their own layer: unchanged by code-only commits.
COPY --from=build /opt/venv /opt/venv

# The project itself, installed from its wheel only (no index, dependencies already
# present); pip check fails the build if pyproject.toml and the venv ever disagree.
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-index --no-deps /tmp/dist/*.whl \
    && pip check \
    && rm -rf /tmp/dist

# app.py (gunicorn's "app:app") and gunicorn.conf.py are not in the wheel; gunicorn
# reads ./gunicorn.conf.py from its working directory.
WORKDIR /app
COPY app.py gunicorn.conf.py ./
COPY scripts/container-entrypoint.sh /usr/local/bin/relay-entrypoint

# The SQLite database (and nothing else) lives here; owned by relay, see above.
VOLUME ["/data"]

# Documentation only: the port gunicorn binds inside the container (PORT above).
EXPOSE 8080

# /healthz answers 200 while the process serves. Slim images have no curl; python and
# urllib are always there (urlopen raises, so exits 1, on any non-2xx).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"]

# `relay serve` stops taking work on SIGTERM and finishes in-flight deliveries.
STOPSIGNAL SIGTERM

# The entrypoint starts as root only to chown a root-mounted /data (Fly volumes), then
# drops to the relay user; see scripts/container-entrypoint.sh.
ENTRYPOINT ["relay-entrypoint"]
CMD ["relay", "serve"]
