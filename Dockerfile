# The agentmesh image the Kubernetes manifests in deploy/ run: `agentmesh serve <service>`,
# `agentmesh serve gateway`, `agentmesh migrate`. Build: `docker build -t agentmesh:0.1.0 .`
# generated/ is committed, so no protoc step is needed here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY gateway ./gateway
COPY generated ./generated
RUN pip install . && rm -rf /src

# A fixed, unprivileged user (the manifests' runAsUser); no writable home or data dir is needed in
# production (DATABASE_URL and REDIS_URL point at the external PostgreSQL and Redis).
RUN groupadd --system --gid 10001 agentmesh \
    && useradd --system --uid 10001 --gid agentmesh --no-create-home --shell /usr/sbin/nologin agentmesh
USER 10001:10001
WORKDIR /tmp

EXPOSE 50051 8080 9090
ENTRYPOINT ["agentmesh"]
CMD ["--help"]
