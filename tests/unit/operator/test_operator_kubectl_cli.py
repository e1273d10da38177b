"""kubectl hotswap's own commands and behaviour at the edges: `list [-A]`, `version`,
`completion bash|zsh`, `status --wait` through API errors that pass, and the error a
user gets when the [kubectl] extra is missing. The API server is a scripted stand-in
behind `Kube.request` (each path answers with a document, None for 404, or an error).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tomllib
from importlib.metadata import version as installed_version
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from hotswap_operator.kube import Kube, KubeError
from hotswap_operator.kubectl import api, cli, completion
from hotswap_operator.kubectl import complete as complete_words
from hotswap_operator.kubectl.api import Session

REPO = Path(__file__).resolve().parents[3]
HOST = "https://api.example:6443"
MDS = "/apis/hotswap.dev/v1alpha1/namespaces/{ns}/modeldeployments"


class Scripted(Kube):
    """Answers each GET from `answers`: path -> a document, None or an exception, or a
    list of those (one per call, in order)."""

    def __init__(self, answers):
        super().__init__(SimpleNamespace(configuration=SimpleNamespace(host=HOST)))
        self.answers = answers

    def request(self, method, path, body=None, query=None, content_type=None):
        answer = self.answers[path]
        if isinstance(answer, list):
            answer = answer.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def session(answers, namespace="models"):
    return Session(Scripted(answers), namespace)


def run(monkeypatch, capsys, answers, *argv):
    """cli.main(argv) with `connect` giving a Session on the scripted server."""
    monkeypatch.setattr(cli, "connect", lambda kubeconfig, context, ns: session(answers, ns))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def md(namespace, name, phase, **status):
    history = [{"revision": status.pop("latest")}] if "latest" in status else []
    return {
        "metadata": {"namespace": namespace, "name": name},
        "status": {"phase": phase, "history": history, **status},
    }


# ---- list ----------------------------------------------------------------------------


def test_list_one_namespace_and_all_of_them(monkeypatch, capsys):
    ready = md("models", "resnet", "Ready", latest=2, serving="2", ready="2/2", updated="2/2")
    other = md("team-b", "bert", "Progressing", latest=5, serving="4,5", ready="1/3")
    answers = {
        MDS.format(ns="models"): {"items": [ready]},
        "/apis/hotswap.dev/v1alpha1/modeldeployments": {"items": [other, ready]},
    }
    code, out, _ = run(monkeypatch, capsys, answers, "list", "-n", "models")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["NAME", "SERVING", "LATEST", "UPDATED", "READY", "PHASE", "CHECKPOINT"],
        ["resnet", "2", "2", "2/2", "2/2", "Ready", "-"],
    ]
    code, out, _ = run(monkeypatch, capsys, answers, "list", "--all-namespaces", "-o", "json")
    assert code == 0
    rows = json.loads(out)["items"]
    assert [(r["namespace"], r["name"], r["serving"]) for r in rows] == [
        ("models", "resnet", "2"),
        ("team-b", "bert", "4,5"),
    ]
    code, out, _ = run(monkeypatch, capsys, answers, "list", "-A")
    assert out.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]


def test_list_when_there_is_none_or_it_is_forbidden_or_not_served(monkeypatch, capsys):
    empty = {MDS.format(ns="models"): {"items": []}}
    code, out, _ = run(monkeypatch, capsys, empty, "list", "-n", "models")
    assert (code, out) == (0, "No ModelDeployments found in namespace models.\n")
    denied = {"/apis/hotswap.dev/v1alpha1/modeldeployments": KubeError(403, "GET: 403 forbidden")}
    code, out, err = run(monkeypatch, capsys, denied, "list", "-A")
    assert (code, out) == (1, "")
    assert "forbidden; -A needs list on modeldeployments.hotswap.dev in every namespace" in err
    assert "-n NAMESPACE" in err
    missing = {MDS.format(ns="models"): None}
    code, _, err = run(monkeypatch, capsys, missing, "list", "-n", "models")
    assert code == 1 and "does not serve modeldeployments.hotswap.dev/v1alpha1" in err
    assert "install the CRDs" in err


# ---- version -------------------------------------------------------------------------


def test_version_client_needs_no_cluster_and_reads_the_package_metadata(monkeypatch, capsys):
    def no_connection(*_):
        raise AssertionError("version --client connected")

    monkeypatch.setattr(cli, "connect", no_connection)
    assert cli.main(["version", "--client"]) == 0
    out = capsys.readouterr().out
    assert out == f"Client:        kubectl hotswap {installed_version('hotswap')}\n"


def test_version_shows_what_the_cluster_serves(monkeypatch, capsys):
    group = {
        "versions": [{"version": "v1alpha1"}],
        "preferredVersion": {"version": "v1alpha1"},
    }
    answers = {
        "/version": {"gitVersion": "v1.36.0"},
        "/apis/hotswap.dev": group,
        "/apis/apps/v1/deployments": {"items": []},
    }
    code, out, _ = run(monkeypatch, capsys, answers, "version", "-o", "yaml")
    assert code == 0
    assert yaml.safe_load(out)["server"] == {
        "kubernetes": "v1.36.0",
        "apiGroup": "hotswap.dev",
        "servedVersions": ["v1alpha1"],
        "preferredVersion": "v1alpha1",
    }
    answers["/apis/hotswap.dev"] = None  # no CRDs
    code, out, _ = run(monkeypatch, capsys, answers, "version")
    assert code == 0
    assert "API group:     hotswap.dev not served: the CRDs are not installed" in out
    assert "Operator:      none found in every namespace (helm upgrade --install" in out


def test_version_says_why_the_operator_is_unknown(monkeypatch, capsys):
    """Forbidden everywhere, then in the namespace: the line says so and names the
    admin's command; any other error: the API server's words. Exit 0 either way."""
    forbidden = KubeError(403, "forbidden")
    answers = {
        "/version": {"gitVersion": "v1.36.0"},
        "/apis/hotswap.dev": None,
        "/apis/apps/v1/deployments": forbidden,
        "/apis/apps/v1/namespaces/models/deployments": forbidden,
    }
    code, out, _ = run(monkeypatch, capsys, answers, "version", "-n", "models")
    assert code == 0
    assert (
        "Operator:      unknown: you may not list Deployments in namespace models; an admin "
        "can run kubectl get deployments -A -l app.kubernetes.io/name=hotswap-operator"
    ) in out
    answers["/apis/apps/v1/deployments"] = KubeError(500, "GET: 500 etcd timeout")
    code, out, _ = run(monkeypatch, capsys, answers, "version", "-n", "models")
    assert "Operator:      unknown: listing the operator's Deployments: GET: 500 etcd" in out


def test_version_without_a_cluster_prints_the_client_and_exits_1(monkeypatch, capsys):
    answers = {"/version": KubeError(0, "GET /version: connection refused")}
    code, out, err = run(monkeypatch, capsys, answers, "version")
    assert code == 1 and out.startswith("Client:        kubectl hotswap ")
    assert f"reading the server's version at {HOST}" in err and "connection refused" in err


# ---- status --wait through API errors that pass ---------------------------------------


class Clock:
    """time.monotonic and time.sleep for cli: sleeping advances the clock."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


READY = {
    "metadata": {"name": "resnet", "namespace": "models", "generation": 1},
    "status": {"observedGeneration": 1, "phase": "Ready"},
}


@pytest.mark.parametrize("status", [0, 429, 500, 503])
def test_wait_calls_again_with_backoff_after_errors_that_pass(monkeypatch, capsys, status):
    clock = Clock()
    monkeypatch.setattr(cli, "time", clock)
    busy = [KubeError(status, f"GET: {status} busy")] * 3
    flaky = session({MDS.format(ns="models") + "/resnet": [*busy, READY]})
    found, problem = cli.wait(flaky, "resnet", timeout=60)
    assert (found, problem) == (READY, None)
    assert clock.sleeps == [1.0, 2.0, 4.0]  # doubling from --wait's interval
    assert capsys.readouterr().err.count("warning: ") == 1  # once per run of failures


def test_wait_gives_up_at_its_timeout_and_never_retries_what_will_not_pass(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(cli, "time", clock)
    down = session({MDS.format(ns="models") + "/resnet": KubeError(0, "connection refused")})
    with pytest.raises(api.PluginError) as failed:
        cli.wait(down, "resnet", timeout=60)
    assert "cannot reach the API server at https://api.example:6443" in str(failed.value)
    assert "still failing after --timeout 60s" in str(failed.value)
    assert clock.sleeps == [1, 2, 4, 8, cli.MAX_BACKOFF, cli.MAX_BACKOFF, 13]  # then the end
    denied = session({MDS.format(ns="models") + "/resnet": KubeError(403, "403 forbidden")})
    with pytest.raises(api.PluginError) as refused:
        cli.wait(denied, "resnet", timeout=30)
    assert not isinstance(refused.value, api.TransientError) and "forbidden" in str(refused.value)
    assert clock.now == 60  # no time spent on the 403


# ---- completion ----------------------------------------------------------------------


def complete(script, line):
    """COMPREPLY of the bash completion `script` for the command line `line` (the word
    being completed is the last one; a trailing space starts a new one)."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    program = "\n".join(
        [
            script,
            f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})",
            f"COMP_CWORD={len(words) - 1}",
            "_kubectl_hotswap",
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ]
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_bash_completion_offers_every_subcommand_its_flags_and_choices(capsys):
    assert cli.main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert script.rstrip().endswith("complete -F _kubectl_hotswap kubectl-hotswap")
    subcommands = list(completion.subcommands(cli.parser()))
    assert {"list", "status", "version", "completion"} <= set(subcommands)
    assert complete(script, "kubectl-hotswap ")[: len(subcommands)] == subcommands
    assert complete(script, "kubectl-hotswap st") == ["status"]
    assert complete(script, "kubectl-hotswap status resnet -o ") == ["text", "json", "yaml"]
    assert complete(script, "kubectl-hotswap -n models undo resnet --d") == ["--dry-run"]
    assert complete(script, "kubectl-hotswap list -") == [
        "-h", "--help", "-n", "--namespace", "--kubeconfig", "--context",
        "-A", "--all-namespaces", "-o", "--output",
    ]  # fmt: skip
    assert complete(script, "kubectl-hotswap completion ") == [
        "bash",
        "zsh",
        *complete(script, "kubectl-hotswap completion -"),
    ]
    assert complete(script, "kubectl-hotswap status resnet --timeout ") == []


@pytest.mark.parametrize(
    "words, expected",
    [
        (["st"], ["status"]),
        (["-n", "ml", "set", ""], ["checkpoint"]),
        (["--namespace=ml", "undo", "r", "--to"], ["--to-revision"]),
        (["status", "r", "-o", "y"], ["yaml"]),
        (["status", "r", "--timeout", ""], []),  # a value the user types
        (["completion", ""], ["bash", "zsh"]),
        (["status", "r", ""], []),  # NAME given: nothing more to name
        (["set", "checkpoint", "r", ""], []),  # the URI is the user's
        (["list", "-A", ""], []),
    ],
)
def test_kubectl_complete_offers_what_the_parser_allows(words, expected):
    """`kubectl_complete-hotswap` (kubectl's plugin completion) for the words before the
    cursor and the word being typed; names need a cluster (the integration tests)."""
    assert complete_words.candidates(words[:-1], words[-1]) == expected


def test_kubectl_complete_offers_no_names_without_a_cluster(tmp_path, capsys):
    """No kubeconfig: no candidates and no error, then cobra's no-file-names directive."""
    missing = str(tmp_path / "none")
    assert complete_words.main(["--kubeconfig", missing, "status", ""]) == 0
    assert capsys.readouterr() == (":4\n", "")


def test_zsh_completion_is_the_bash_function_through_bashcompinit():
    bash, zsh = (completion.script(cli.parser(), shell) for shell in ("bash", "zsh"))
    assert zsh.endswith(bash)
    assert "autoload -U +X bashcompinit && bashcompinit" in zsh.splitlines()[:3]


# ---- installation --------------------------------------------------------------------


def test_without_the_kubectl_extra_the_user_reads_what_to_install():
    """As after `pip install hotswap` without [kubectl]: PyYAML and kubernetes missing."""
    code = (
        "import sys; sys.modules['yaml'] = sys.modules['kubernetes'] = None; "
        "from hotswap_operator.kubectl.__main__ import main; sys.exit(main(['--help']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "error: kubectl hotswap needs the Python package(s) PyYAML, kubernetes, which are not "
        "installed: pip install 'hotswap[kubectl]' (from a checkout: pip install '.[kubectl]')\n"
    )


def test_the_kubectl_extra_installs_every_module_the_plugin_checks_for():
    from hotswap_operator.kubectl.__main__ import NEEDED

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = [*project["optional-dependencies"]["kubectl"], *project["dependencies"]]
    names = {req.split("==")[0].lower() for req in pinned}
    assert names == {dist.lower() for dist in NEEDED.values()}
    assert all("==" in req for req in pinned)  # pinned, like the other extras
