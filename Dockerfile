# syntax=docker/dockerfile:1.7
# Two images from one file:
#   docker build --target operator -t ghcr.io/hotswap-dev/hotswap-operator:0.1.0 .
#   docker build --target runtime  -t ghcr.io/hotswap-dev/hotswap-runtime:0.1.0 .
# Both start from a Miniforge (Miniconda-family, conda-forge) base and create the conda
# environment from environment.yml's conda dependencies (python, pip); each target then
# pip-installs only its extra of this project, whose pins equal environment.yml's pip
# pins (a unit test checks). The operator image never installs torch.

ARG MINIFORGE=condaforge/miniforge3:24.9.2-0

FROM ${MINIFORGE} AS conda
COPY environment.yml /tmp/environment.yml
# environment.yml minus its pip: section, so the targets below choose their packages.
RUN python - <<'PY'
import re
text = open("/tmp/environment.yml").read()
conda_only = re.sub(r"\n  - pip:\n(?:      .*\n|\s*#.*\n)*", "\n", text)
open("/tmp/environment.conda.yml", "w").write(conda_only)
PY
RUN conda env create -p /opt/hotswap -f /tmp/environment.conda.yml \
    && conda clean -afy \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin hotswap
ENV PATH=/opt/hotswap/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY runtime ./runtime

FROM conda AS operator
RUN pip install --no-compile ".[operator]" && rm -rf /src
WORKDIR /
USER 10001:10001
ENTRYPOINT ["hotswap-operator"]

FROM conda AS runtime
RUN pip install --no-compile ".[runtime]" && rm -rf /src
WORKDIR /
ENV HOME=/tmp TORCH_HOME=/tmp/torch
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["hotswap-runtime"]
