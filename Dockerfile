# One image for every ImagineQ process; docker-compose.yml picks the command (the Procfile line).

# -- build: wheels for the project and all its dependencies ------------------------------------------
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY config/ config/
COPY core/ core/
COPY workers/ workers/
COPY producers/ producers/
COPY simulator/ simulator/
# The pip cache survives between builds, so a source change does not download every dependency again.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels -c constraints.txt .

# -- runtime ------------------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Installed, not copied: the code runs from site-packages (with core/lua/*.lua as package data), so
# no source tree or .env file sits in the working directory to shadow it. (DL3013: the only index is the
# wheel directory built above from this very checkout.)
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels imagineq \
    && groupadd --system --gid 10001 imagineq \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin imagineq

# An empty, root-owned working directory: nothing in it can shadow the installed packages or be
# read as a .env file.
WORKDIR /app
# Flower's configuration file, read from its working directory: it makes FLOWER_BASIC_AUTH required.
COPY flowerconfig.py /app/flowerconfig.py
# Numeric, so runtimes can verify it is not root (e.g. Kubernetes runAsNonRoot).
USER 10001:10001

# web, flower, simulator (documentation only; compose publishes what it needs).
EXPOSE 8000 5555 8900

# Every service in docker-compose.yml sets its own command; this default only shows the CLI.
CMD ["imagineq", "--help"]
