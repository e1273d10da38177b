"""Operator settings from the environment, and its log filter."""

import logging

import pytest

from hotswap_operator import config
from hotswap_operator.handlers import QuietEventHandlers


def test_namespaces_are_comma_separated_and_empty_means_all():
    assert config.watched_namespaces({"HOTSWAP_NAMESPACES": " a, b ,,"}) == ("a", "b")
    assert config.watched_namespaces({}) == ()


@pytest.mark.parametrize(
    "env,url",
    [
        ({}, "http://127.0.0.1:8081/healthz"),
        ({"POD_IP": "10.0.0.7"}, "http://10.0.0.7:8081/healthz"),
        ({"POD_IP": "fd00::7", "HOTSWAP_LIVENESS_PORT": "9000"}, "http://[fd00::7]:9000/healthz"),
        ({"HOTSWAP_LIVENESS_ENDPOINT": "http://0.0.0.0:1/h"}, "http://0.0.0.0:1/h"),
    ],
)
def test_liveness_endpoint_is_served_on_the_pod_ip(env, url):
    assert config.liveness_endpoint(env) == url


def test_runtime_defaults_default_to_gpu_scheduling():
    defaults = config.runtime_defaults({})
    assert defaults.gpu.enabled and defaults.gpu.limits == {"nvidia.com/gpu": 1}


def record(message, level=logging.INFO):
    return logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None)


def test_event_handler_successes_are_dropped_and_nothing_else():
    quiet = QuietEventHandlers()
    assert not quiet.filter(record("Handler 'pod_event' succeeded."))
    assert quiet.filter(record("Handler 'reconcile_handler' succeeded."))
    assert quiet.filter(record("Handler 'pod_event' failed temporarily: x", logging.ERROR))
