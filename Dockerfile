# hl7engine: slim runtime image, non-root, with a health check on the admin port.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY channels ./channels
COPY bench ./bench
# Installs this project; its dependencies carry lower bounds in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --prefix=/install ".[fast]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HL7ENGINE_MLLP_HOST=0.0.0.0 \
    HL7ENGINE_ADMIN_LISTEN=0.0.0.0:8081
COPY --from=build /install /usr/local
RUN useradd --system --create-home --home-dir /srv/hl7engine --uid 10001 hl7engine
WORKDIR /srv/hl7engine
COPY --chown=hl7engine:hl7engine config ./config
COPY --chown=hl7engine:hl7engine channels ./channels
USER 10001
# 2575: the sample channel's MLLP listener; 8081: /livez /readyz /metrics and the operator API.
EXPOSE 2575 8081
VOLUME ["/srv/hl7engine/data", "/srv/hl7engine/out"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8081/livez', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["hl7engine"]
CMD ["run", "-c", "config/engine.yaml"]
