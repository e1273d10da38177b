# syntax=docker/dockerfile:1.7
# Two images from one file (`make images` builds both here with podman):
#   docker build --target operator -t ghcr.io/hotswap-dev/hotswap-operator:0.1.0 .
#   docker build --target runtime  -t ghcr.io/hotswap-dev/hotswap-runtime:0.1.0 .
# BASE is any Debian bookworm image with python3.11 and its venv module: by default the
# public Python image; where no registry is reachable, scripts/build-base-image.sh makes
# one with debootstrap and Debian's python3.11 (--build-arg BASE=localhost/python:3.11-bookworm).
# Pins come from pyproject.toml alone (environment.yml repeats them for conda users; a
# unit test keeps the two equal). The operator image never installs torch.
# Layers: pins, then the pinned packages (torch: gigabytes), then this project's code;
# a code change rebuilds only the last. pip's cache is a build cache mount (named with
# --cache-dir: HOME is /tmp here), so a rebuild with other pins downloads only what changed.
# Both images run as uid 10001 with a read-only root filesystem: everything they write
# (/tmp, which is also HOME and TORCH_HOME, and the runtime's checkpoint cache) is a
# volume that the chart or the operator mounts.

ARG BASE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE} AS python
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin hotswap \
    && python3 -m venv /opt/hotswap
ENV PATH=/opt/hotswap/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HOME=/tmp

# The pins of each image as requirement files: the layers below are rebuilt only when
# these files change, not on every edit of pyproject.toml.
FROM python AS pins
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]; \
[open(f"/tmp/{x}.txt", "w").write("\n".join(p["dependencies"] + p["optional-dependencies"][x]) + "\n") \
 for x in ("operator", "runtime")]'

FROM python AS operator-deps
COPY --from=pins /tmp/operator.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    pip install --cache-dir /root/.cache/pip -r /tmp/requirements.txt && rm /tmp/requirements.txt

FROM python AS runtime-deps
COPY --from=pins /tmp/runtime.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    pip install --cache-dir /root/.cache/pip -r /tmp/requirements.txt && rm /tmp/requirements.txt

# This project's code, without its dependencies (installed above).
FROM python AS app
COPY pyproject.toml README.md /src/
COPY contract /src/contract
COPY operator /src/operator
COPY runtime /src/runtime
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    pip wheel --cache-dir /root/.cache/pip --no-deps --wheel-dir /wheels /src

# The quickstart's checkpoints (examples/quickstart.yaml), made here as examples/checkpoints.py
# makes them: seeded resnet18 weights, the same bytes (and sha256) wherever these pins
# run, so the example works on a default install with no volume and no download.
FROM runtime-deps AS examples
COPY examples/checkpoints.py /tmp/checkpoints.py
RUN python3 /tmp/checkpoints.py --dir /opt/hotswap-examples --versions 1 2

FROM operator-deps AS operator
COPY --from=app /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
WORKDIR /
USER 10001:10001
ENTRYPOINT ["hotswap-operator"]

FROM runtime-deps AS runtime
COPY --from=examples /opt/hotswap-examples /opt/hotswap-examples
COPY --from=app /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
ENV TORCH_HOME=/tmp/torch
WORKDIR /
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["hotswap-runtime"]
