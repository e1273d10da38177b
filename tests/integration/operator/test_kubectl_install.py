"""`kubectl hotswap` installed the way README.md says, into a clean venv, and run there.

    python3 -m venv --upgrade-deps VENV && VENV/bin/pip install '<checkout>[kubectl]'

Nothing of the dev venv is visible: the venv is made by the system's python3 without
site packages, and pip fetches from PyPI (through pip's own cache). `--upgrade-deps`
gives the venv a current pip: the one ensurepip bundles with Python 3.11 took 87-104 s
for the same install on the 2-core dev machine under load, a current one 43-66 s. The checkout is
copied first (the files git knows: tracked, or new and not ignored), so the build writes
nothing into the working tree. Every subcommand's `--help` must run there: they are read
from the installed plugin's own parser, so a new subcommand is covered without a list.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from hotswap_operator.kubectl import cli, completion

REPO = Path(__file__).resolve().parents[3]
INSTALL_BUDGET = 120.0  # seconds: pip's cache warm, or PyPI reachable

pytestmark = pytest.mark.slow


def checkout_copy(dest: Path) -> Path:
    """The files of the working tree that git knows (tracked, or new and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A clean venv with the checkout installed by the documented command; the install's
    wall time is printed (pytest -s) and held to INSTALL_BUDGET."""
    root = tmp_path_factory.mktemp("kubectl-install")
    checkout = checkout_copy(root / "hotswap")
    python3 = shutil.which("python3") or sys.executable
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)  # the plugin must come from the venv, not this checkout
    started = time.monotonic()
    made = subprocess.run(
        [python3, "-m", "venv", "--upgrade-deps", str(root / "venv")],
        capture_output=True,
        text=True,
        env=env,
        timeout=INSTALL_BUDGET,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    print(f"python3 -m venv --upgrade-deps: {time.monotonic() - started:.1f}s")
    started = time.monotonic()
    done = subprocess.run(
        [str(root / "venv" / "bin" / "pip"), "install", "-q", f"{checkout}[kubectl]"],
        capture_output=True,
        text=True,
        env=env,
        timeout=2 * INSTALL_BUDGET,
    )
    took = time.monotonic() - started
    print(f"pip install '{checkout}[kubectl]' into a clean venv: {took:.1f}s")
    assert done.returncode == 0, done.stdout + done.stderr
    assert took < INSTALL_BUDGET, f"the install took {took:.0f}s"
    return root / "venv", env


def in_venv(venv, *args):
    path, env = venv
    return subprocess.run(
        [str(path / "bin" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        env=env,
        cwd=path,  # never the checkout: nothing importable from the working directory
        timeout=60,
    )


def test_every_subcommand_s_help_runs_from_the_clean_venv(venv):
    listed = in_venv(
        venv,
        "python",
        "-c",
        "from hotswap_operator.kubectl import cli, completion; "
        "print(*completion.subcommands(cli.parser()))",
    )
    assert listed.returncode == 0, listed.stderr
    installed = listed.stdout.split()
    assert installed == list(completion.subcommands(cli.parser()))  # this checkout's
    for argv in ([], *([name] for name in installed)):
        done = in_venv(venv, "kubectl-hotswap", *argv, "--help")
        assert done.returncode == 0 and "Traceback" not in done.stderr, (argv, done)
        assert done.stdout.startswith(" ".join(["usage: kubectl hotswap", *argv])), argv


def test_version_and_completion_need_no_cluster(venv):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    shown = in_venv(venv, "kubectl-hotswap", "version", "--client", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["client"]["version"] == project["version"]
    script = in_venv(venv, "kubectl-hotswap", "completion", "bash")
    assert script.returncode == 0 and "complete -F _kubectl_hotswap kubectl-hotswap" in (
        script.stdout
    )
    offered = in_venv(venv, "kubectl_complete-hotswap", "st")  # kubectl's plugin completion
    assert (offered.returncode, offered.stdout, offered.stderr) == (0, "status\n:4\n", "")
    lost = in_venv(venv, "kubectl-hotswap", "list", "--kubeconfig", "/nonexistent/config")
    assert lost.returncode == 1 and "Traceback" not in lost.stderr
    assert lost.stderr.startswith("error: kubeconfig /nonexistent/config: ")


def test_the_plugin_imports_only_what_the_kubectl_extra_installs(venv):
    """Each distribution the extra names is imported by the plugin (none is there for
    nothing), and the venv has neither kopf nor torch; that nothing is missing, the runs
    above show (connect imports kubernetes lazily: it runs here too)."""
    code = (
        "import json, sys\n"
        "from importlib import metadata\n"
        "from hotswap_operator.kubectl import api, cli\n"
        "cli.parser()\n"
        "try:\n"
        "    api.connect('/nonexistent/config')\n"
        "except api.ConfigError:\n"
        "    pass\n"
        "owners = metadata.packages_distributions()\n"
        "tops = {m.split('.')[0] for m in sys.modules}\n"
        "used = {d for t in tops for d in owners.get(t, ())}\n"
        "print(json.dumps({'used': sorted(used),\n"
        "    'installed': sorted(d.metadata['Name'] for d in metadata.distributions())}))\n"
    )
    done = in_venv(venv, "python", "-c", code)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert not {"kopf", "torch", "fastapi"} & {d.lower() for d in found["installed"]}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = [*project["optional-dependencies"]["kubectl"], *project["dependencies"]]
    wanted = {_name(req.split("==")[0]) for req in pinned}
    assert wanted <= {_name(d) for d in found["used"]}, found["used"]


def _name(distribution: str) -> str:
    return distribution.lower().replace("_", "-")


def test_the_installed_plugin_reads_the_control_plane(venv, cluster, namespace):
    """The clean venv's plugin against the real API server: what it serves, and an empty
    namespace listed (as the cluster's admin)."""
    cluster.apply_crd(REPO / "crds")
    kubeconfig = ["--kubeconfig", str(cluster.kubeconfig)]
    shown = in_venv(venv, "kubectl-hotswap", "version", *kubeconfig)
    assert shown.returncode == 0, shown.stderr
    assert f"Kubernetes:    {cluster.version()}" in shown.stdout
    assert "API group:     hotswap.dev v1alpha1 (preferred v1alpha1)" in shown.stdout
    listed = in_venv(venv, "kubectl-hotswap", "list", "-n", namespace, *kubeconfig)
    assert (listed.returncode, listed.stdout) == (
        0,
        f"No ModelDeployments found in namespace {namespace}.\n",
    ), listed.stderr


def test_the_dashboard_page_is_installed_with_the_plugin(venv):
    """The page's files are package data: a wheel without them would serve 500s."""
    code = (
        "from importlib.resources import files; "
        "from hotswap_operator.kubectl.web import STATIC; "
        "print(*sorted(files('hotswap_operator.kubectl').joinpath('static', name).is_file() "
        "for name, _ in STATIC.values()))"
    )
    found = in_venv(venv, "python", "-c", code)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["True", "True", "True"]
