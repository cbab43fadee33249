# mcpserver as a container: an Istio config source that istiod dials (xds://HOST:15051).
#
#   docker build -t mcpserver .
#   docker run -v $PWD/config.yaml:/etc/mcpserver/config.yaml:ro -p 15051:15051 mcpserver
#
# BASE must be a Debian-like image with Python 3.11 (`python3 -m venv` in the build stage, the
# same interpreter at the same path in the runtime stage). To reach a private package index,
# give pip its configuration as a build secret (nothing of it stays in any layer):
#   docker build --secret id=pip.conf,src=$HOME/.config/pip/pip.conf -t mcpserver .
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The dependencies first, in a layer of their own that only a change of pyproject.toml
# rebuilds: an empty project with the same requirements, installed and then removed.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    python3 -m venv /opt/mcpserver \
 && mkdir -p mcpserver generated && touch README.md \
 && /opt/mcpserver/bin/pip install . \
 && /opt/mcpserver/bin/pip uninstall --yes mcpserver
# then mcpserver itself (.dockerignore keeps everything else out of the context; the
# README, which pyproject.toml names as the long description, stays the empty one above)
COPY mcpserver ./mcpserver
COPY generated ./generated
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    /opt/mcpserver/bin/pip install --no-deps . \
 && /opt/mcpserver/bin/pip uninstall --yes pip setuptools \
 && /opt/mcpserver/bin/python -m compileall -q /opt/mcpserver/lib

FROM ${BASE}
# a fixed UID/GID (Kubernetes' runAsNonRoot needs a numeric user; the chart uses the same)
RUN groupadd --gid 10001 mcpserver \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mcpserver \
 && mkdir -p /etc/mcpserver
COPY --from=build /opt/mcpserver /opt/mcpserver
# Read-only root filesystem: the bytecode was compiled in the build stage and nothing is
# written at run time. Listening on every interface is what a container needs; a config file
# that sets server.listen/admin is overridden by these, so change them here or with -e.
ENV PATH=/opt/mcpserver/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MCPSERVER_SERVER__LISTEN=0.0.0.0:15051 \
    MCPSERVER_SERVER__ADMIN=0.0.0.0:15052
USER 10001:10001
EXPOSE 15051/tcp 15052/tcp
# no curl in the image: the interpreter that runs the server asks its own /healthz, on the
# admin port the server was told (`-e MCPSERVER_SERVER__ADMIN=0.0.0.0:PORT` moves both)
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/opt/mcpserver/bin/python", "-c", "import os, urllib.request; port = os.environ.get('MCPSERVER_SERVER__ADMIN', ':15052').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"]
# mcpserver is PID 1 and handles SIGTERM itself (drain, then stop: docs/deployment.md "Deploy")
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/mcpserver/bin/mcpserver"]
CMD ["serve", "--config", "/etc/mcpserver/config.yaml"]
