# One image, every role: `catalog`, `order --id N` (or BAZAAR_ORDER_ID), `frontend`.
#
#   docker build -t stock-bazaar .
#   docker run --rm stock-bazaar catalog
#
# BASE_IMAGE must be a Debian-like image with python3 (3.11+) and its venv
# module; scripts/make-base-image.sh builds one with debootstrap where
# registry images cannot be pulled.
ARG BASE_IMAGE=python:3.12-slim

# ---- requirements: the dependency list alone, out of pyproject.toml --------
# Its output only changes when the dependencies do, so a version bump or a
# dev-tool change does not throw away the dependency layer below.
FROM ${BASE_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt

# ---- build: a self-contained venv in /opt/bazaar ---------------------------
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/bazaar
WORKDIR /src

# Dependencies first, in a layer of their own: cached until they change.
COPY --from=requirements /src/requirements.txt ./
RUN /opt/bazaar/bin/pip install --no-compile -r requirements.txt setuptools wheel

# Then the source. Not editable: the final image holds no /src.
COPY pyproject.toml README.md ./
COPY bazaar ./bazaar
RUN /opt/bazaar/bin/pip install --no-compile --no-deps --no-build-isolation . \
 && /opt/bazaar/bin/pip uninstall --yes setuptools wheel pip \
 && find /opt/bazaar -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/bazaar/bin/python -m compileall -q -j 0 /opt/bazaar/lib

# ---- runtime: the venv, a user, nothing else --------------------------------
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="stock-bazaar" \
      org.opencontainers.image.description="Stock Bazaar: catalog, order replicas and HTTP front end"

# A fixed uid so named volumes and host bind mounts get predictable owners.
# /keys: the cluster's CurveZMQ keys (docker-compose.yml's `keys` volume,
# seeded bazaar-owned and 0700 from here).
RUN groupadd --gid 10001 bazaar \
 && useradd --uid 10001 --gid bazaar --no-create-home --home-dir /data --shell /usr/sbin/nologin bazaar \
 && mkdir -p /data /keys \
 && chown bazaar:bazaar /data /keys \
 && chmod 700 /keys

COPY --from=build /opt/bazaar /opt/bazaar

# PYTHONUNBUFFERED: logs reach `docker logs` as they happen.
# PYTHONDONTWRITEBYTECODE: the venv is precompiled and read-only to the user.
# MALLOC_ARENA_MAX=2: glibc gives each thread that allocates its own arena;
# with worker pools that is a few MB of RSS per service for nothing
# (docs/performance.md, Footprint).
# BAZAAR_BIND_HOST=0.0.0.0: in a container the RPC ports must be reachable on
# its network (outside an image the default is 127.0.0.1); BAZAAR_KEYS_DIR:
# every internal socket is CurveZMQ with the keys there (docs/security.md).
ENV PATH=/opt/bazaar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2 \
    BAZAAR_DATA_DIR=/data \
    BAZAAR_KEYS_DIR=/keys \
    BAZAAR_BIND_HOST=0.0.0.0 \
    BAZAAR_HTTP_PORT=8080

# Numeric, so runtimes (and Kubernetes runAsNonRoot) can tell it is not root.
USER 10001:10001
WORKDIR /data
# A new named volume is seeded from this directory, bazaar-owned.
VOLUME ["/data"]
EXPOSE 8080 5555 5556 5561 5562 5563

# Exec form, no shell: the `bazaar` process is PID 1 and receives SIGTERM
# itself (each role turns it into a clean stop in well under a second).
ENTRYPOINT ["bazaar"]
CMD ["frontend"]
