# syntax=docker/dockerfile:1
# One image for every Replicant process: `replicant api` (the default), `replicant worker ...`
# and the one-shot `replicant seed`. docker-compose.yml runs it as each of them.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    REPLICANT_DATA_DIR=/data \
    REPLICANT_API_HOST=0.0.0.0 \
    REPLICANT_API_PORT=8000

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The built-in OCR model's OpenCV loads libGL (Debian's current build of each); bubblewrap
# is the model sandbox (docs/hardening.md).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 bubblewrap \
    && rm -rf /var/lib/apt/lists/*

COPY . .
# The built-in models live next to the package (replicant/versions.py looks for them at
# <site-packages>/examples), but they are not package data: put them there.
RUN pip install --no-cache-dir --no-deps . \
    && cp -r examples "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/examples" \
    && useradd --no-log-init --create-home --uid 10001 --user-group replicant \
    && mkdir -p /data \
    && chown replicant:replicant /data

# Model versions, their Python environments and (with REPLICANT_STORAGE=local) files.
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000

# Ready means: database, Temporal and a worker on every hardware queue (GET /health).
# Workers have no HTTP port: docker-compose.yml turns this check off for them.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; from replicant.settings import get_settings; urllib.request.urlopen(f'http://127.0.0.1:{get_settings().api_port}/health', timeout=4)"]

CMD ["replicant", "api"]
