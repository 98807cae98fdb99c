# perfwatch's image: perfwatch-exporter and perfwatch-archiver (compose.yaml picks one per service).
# Build: docker build -t perfwatch:0.2.0 .
FROM python:3.11.13-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY perfwatch perfwatch
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /wheels .

FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The archiver runs as this user; the exporter runs as root with only CAP_PERFMON (compose.yaml),
# because system-wide perf counting needs it.
RUN useradd --system --uid 10280 --user-group --home-dir /var/lib/perfwatch --create-home \
        --shell /usr/sbin/nologin perfwatch

# The same wheel a user installs, with the archiver's extra: one image serves both programs.
COPY --from=wheel /wheels /tmp/wheels
RUN pip install "$(echo /tmp/wheels/perfwatch-*.whl)[archiver]" && rm -rf /tmp/wheels

USER perfwatch
WORKDIR /var/lib/perfwatch
EXPOSE 10280 10281
CMD ["perfwatch-exporter"]
