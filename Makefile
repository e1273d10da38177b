# hotswap developer entry points. `make demo` and `make test` are the README's quick start.
SHELL := /bin/bash
PY ?= .venv/bin/python
VENV_STAMP := .venv/.installed
CONTROLPLANE := .cache/bin/controlplane
HELM := .cache/bin/helm
HELM3 := .cache/bin/helm3
KUBECONFORM := .cache/bin/kubeconform
REGISTRY := .cache/bin/registry
FAKE_GCS := .cache/bin/fake-gcs-server
AZURITE := .cache/azurite
PROMETHEUS := .cache/bin/prometheus
LUAHEALTH := .cache/bin/luahealth

.PHONY: all deps controlplane helm kubeconform registry emulators fake-gcs-server azurite prometheus luahealth crds chart-docs manifests node-deps node images test unit lint typecheck demo cluster e2e-smoke bench bench-quick bench-serving bench-large bench-large-cloud bench-peer clean

all: deps controlplane helm node images

# Python environment: one venv with every extra (operator, runtime, test).
deps: $(VENV_STAMP)
$(VENV_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[operator,runtime,test]'
	touch $@

controlplane:
	devcluster/controlplane/build.sh $(CONTROLPLANE)

helm:
	scripts/install-helm.sh $(HELM)
	scripts/install-helm.sh $(HELM3) 3

# kubeconform, from its Go module; the tests feed it schemas from the API server.
kubeconform:
	scripts/install-kubeconform.sh $(KUBECONFORM)

# The CNCF distribution registry, from its Go module: the oci:// tests start it.
registry:
	nice -n 10 scripts/install-registry.sh $(REGISTRY)

# Storage emulators the gs:// and az:// tests start: fake-gcs-server from its Go module
# into .cache/bin, Azurite from npm (pinned by devcluster/azurite-npm's
# package-lock.json) into .cache/azurite.
emulators: fake-gcs-server azurite

fake-gcs-server:
	nice -n 10 scripts/install-fake-gcs-server.sh $(FAKE_GCS)

azurite:
	nice -n 10 scripts/install-azurite.sh $(AZURITE)

# prometheus and promtool (kubernetes_sd only), from Prometheus' Go module: the e2e
# test's Prometheus and `promtool test rules` of the chart's alerts.
prometheus:
	nice -n 10 scripts/install-prometheus.sh $(PROMETHEUS)

# gopher-lua running the chart's Argo CD health check as Argo CD does.
luahealth:
	devcluster/luahealth/build.sh $(LUAHEALTH)

# crds/modeldeployment.yaml is the one source of the CRD; the charts carry copies (a test
# keeps them byte-identical): charts/hotswap/crds/ (installed once by helm) and
# charts/hotswap-crds/files/ (templated, so `helm upgrade` upgrades it).
crds:
	cp crds/*.yaml charts/hotswap/crds/
	cp crds/*.yaml charts/hotswap-crds/files/

# Manifest checks (also part of `make test`): the chart's values schema and README,
# kube-linter's default checks (devcluster/kubelint.py, .kube-linter.yaml), the real
# API server's strict server-side dry-run and kubeconform -strict (schemas from that API
# server) of every rendered manifest and every object the operator builds, and the CRD
# upgrade paths.
manifests: deps controlplane helm kubeconform
	$(PY) -m pytest -q tests/unit/operator/test_chart_values.py tests/unit/operator/test_chart_options.py \
		tests/unit/operator/test_chart_lint.py tests/integration/operator/test_chart_cluster.py

# The values table of charts/hotswap/README.md, from values.yaml and values.schema.json.
chart-docs: deps
	$(PY) scripts/chart_docs.py

# The real node: Debian packages (runc, CNI plugins, podman, debootstrap, iptables; needs
# root), then kubelet, kube-proxy, containerd and pause built into .cache/bin.
node-deps:
	scripts/node-deps.sh

node: node-deps
	nice -n 10 scripts/build-node.sh

# Operator and runtime images from the Dockerfile (podman; a debootstrap base, as no
# registry is reachable here); prints their sizes.
images: node-deps
	nice -n 10 scripts/build-images.sh

test: deps controlplane helm kubeconform registry emulators prometheus luahealth node images lint typecheck
	$(PY) -m pytest

unit: deps
	$(PY) -m pytest tests/unit

lint: deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: deps
	$(PY) -m mypy

demo: deps controlplane helm node images
	$(PY) scripts/demo.py

# The control plane alone (no node: pods stay Pending) until Ctrl-C; prints its KUBECONFIG.
cluster: deps controlplane
	$(PY) -m devcluster.cluster up

e2e-smoke: deps controlplane helm node images
	@rm -f .cache/e2e-smoke.txt
	HOTSWAP_E2E_TABLE=.cache/e2e-smoke.txt $(PY) -m pytest -q -p no:cacheprovider \
		tests/e2e/test_swap.py -k three_replica_swap -s
	@echo; cat .cache/e2e-smoke.txt

bench-quick: deps
	$(PY) bench/swap.py --quick

bench: deps
	$(PY) bench/swap.py

bench-serving: deps
	$(PY) bench/serving.py

bench-large: deps
	$(PY) bench/large.py --gb 2 --dtypes float16

bench-large-cloud: deps emulators
	$(PY) bench/large.py --gb 2 --dtypes float16 --clients 0 --source http,gs,az

# hotswap next to Ray Serve (the optional `peer` extra, installed here, not by `deps`).
PEER_STAMP := .venv/.peer-installed
$(PEER_STAMP): $(VENV_STAMP)
	$(PY) -m pip install -q -e '.[runtime,peer]'
	touch $@

bench-peer: deps $(PEER_STAMP)
	$(PY) bench/swap.py --models resnet18 --peer ray

clean:
	$(PY) -m devcluster.node cleanup
	rm -rf .cache/run build dist *.egg-info
