# syntax=docker/dockerfile:1
#
# The mesh's image: `mesh serve` (one pod) by default; every other `mesh` command runs from it too
# (`docker run IMAGE status --target HOST:8033`). Build from the repository root:
#
#   docker build -t mesh:0.1.0 .
#
# tests/integration/test_wheel_install.py does what this file does without Docker: it copies what
# the builder stage COPYs (through .dockerignore) from a clean checkout, runs the builder's RUN
# line, then runs the final stage's install RUN line into a fresh venv and serves models from it.
# It reads those lines from here, so keep them in this shape (plain COPY, one RUN each).

# The base, pinned to CPython 3.11 on Debian bookworm (constraints.txt was resolved for 3.11).
# Pin a digest here (python:3.11-slim-bookworm@sha256:...) for byte-for-byte rebuilds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Builder: the project's wheel from the source, nothing else (no dependencies are installed here).
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto/ proto/
COPY mesh/ mesh/
COPY mesh_common/ mesh_common/
COPY mesh_tools/ mesh_tools/
COPY adapters/ adapters/
COPY placement/ placement/
COPY puller/ puller/
RUN python -m pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /dist .

# Runtime: the wheel (not editable) and its pinned dependencies, run as a fixed non-root user.
# The slim base has no compiler; the wheel and constraints.txt are mounted for the install step
# only, pip keeps no cache, and `wheel` (a build tool some bases ship) is removed. setuptools
# stays: torch requires it at run time.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mesh" \
      org.opencontainers.image.description="Multi-model serving mesh: KServe v2 gRPC, ModelMesh's management API" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    MESH_HOST=0.0.0.0
RUN groupadd --gid 10001 mesh \
 && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/mesh \
        --shell /usr/sbin/nologin mesh
# torch comes from the CPU index (constraints.txt pins torch==2.13.0+cpu, which only that index
# has): the default PyPI wheel pulls gigabytes of CUDA libraries.
RUN --mount=type=bind,from=builder,source=/dist,target=/tmp/mesh-dist \
    --mount=type=bind,source=constraints.txt,target=/tmp/mesh-constraints.txt \
    python -m pip install --no-cache-dir \
        --extra-index-url https://download.pytorch.org/whl/cpu \
        --constraint /tmp/mesh-constraints.txt \
        /tmp/mesh-dist/*.whl \
 && python -m pip uninstall --yes wheel \
 && python -m pip check
USER 10001:10001
WORKDIR /home/mesh
# 8033: gRPC (KServe v2 data plane, ModelMesh's API, MeshAdmin, health, reflection);
# 8008: HTTP (REST data plane); 2112: Prometheus metrics.
EXPOSE 8033 8008 2112
ENTRYPOINT ["mesh"]
CMD ["serve"]
