"""handlers.login in a pod: kopf's watches reach the API server at the address the
kubelet gives every pod (KUBERNETES_SERVICE_HOST/PORT), as the Lease and the writes do,
never by a DNS name that a cluster DNS outage takes away."""

import kopf
import pytest
from kubernetes.config import incluster_config

from hotswap_operator import handlers


@pytest.fixture
def in_a_pod(monkeypatch, tmp_path):
    """The ServiceAccount's files and the kubelet's variables, as in a pod."""
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-token\n")
    ca.write_text("not read here\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    return ca


def test_in_a_pod_kopf_connects_to_the_service_host_with_the_service_account(in_a_pod):
    info = handlers.login(settings=kopf.OperatorSettings(), logger=None)
    assert info is not None
    assert info.server == "https://10.96.0.1:443"  # not https://kubernetes.default.svc
    assert info.as_http_headers() == {"Authorization": "bearer sa-token"}
    assert info.ca_path == str(in_a_pod) and not info.insecure


def test_an_ipv6_service_host_is_bracketed(in_a_pod, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    info = handlers.login(settings=kopf.OperatorSettings(), logger=None)
    assert info is not None and info.server == "https://[fd00::1]:443"
