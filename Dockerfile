# perfwatch's image: perfwatch-exporter and perfwatch-archiver (compose.yaml picks one per service).
# Build: docker build -t perfwatch:0.1.0 .
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The archiver runs as this user; the exporter runs as root with only CAP_PERFMON (compose.yaml),
# because system-wide perf counting needs it.
RUN useradd --system --uid 10280 --user-group --home-dir /var/lib/perfwatch --create-home \
        --shell /usr/sbin/nologin perfwatch

WORKDIR /opt/perfwatch
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
COPY exporter/__init__.py exporter/__init__.py
COPY archiver/__init__.py archiver/__init__.py
RUN pip install .  && pip uninstall -y perfwatch
# Installed in place (editable) so the archiver finds its SQL migrations under /opt/perfwatch/sql.
COPY exporter exporter
COPY archiver archiver
COPY sql sql
RUN pip install --no-deps -e . && python -m compileall -q exporter archiver

USER perfwatch
EXPOSE 10280 10281
CMD ["perfwatch-exporter"]
