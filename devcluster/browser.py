"""A real browser for tests and benchmarks: Debian's headless Chromium driven by
Selenium through /usr/bin/chromedriver (no browser download), and the
`kubectl hotswap dashboard` process it looks at.

Chromium and chromium-driver come from scripts/browser-deps.sh (apt); Selenium from
the `test` extra. Screenshots go to ARTIFACTS (printed, kept after the run).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devcluster.cluster import REPO
from devcluster.waiting import wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("HOTSWAP_ARTIFACTS", REPO / ".cache" / "artifacts" / "browser"))
PLUGIN = Path(sys.executable).parent / "kubectl-hotswap"
WIDTH, HEIGHT = 1400, 1000


def missing() -> str | None:
    """Why no browser can run here (None: it can), with the fix."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is missing: run scripts/browser-deps.sh (apt: chromium chromium-driver)"
    return None


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Selenium WebDriver), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--enable-precise-memory-info",
        f"--window-size={WIDTH},{HEIGHT}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, name: str) -> Path:
    """The whole page as ARTIFACTS/<name>.png (its path is printed)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(WIDTH, max(HEIGHT, min(height + 40, 6000)))
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def browser_rss_bytes(driver: Any) -> int:
    """The resident memory of chromedriver's Chromium and all its processes (/proc)."""
    root = driver.service.process.pid
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


class DashboardProcess:
    """`kubectl-hotswap dashboard NAME` as a user runs it; `url` is the URL it printed."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str, *flags: str) -> None:
        cmd = [str(PLUGIN), "dashboard", name, "-n", namespace, "--kubeconfig", str(kubeconfig)]
        environ = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        self.proc = subprocess.Popen(
            [*cmd, *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        self.lines: list[str] = []
        self.errors = ""
        threading.Thread(target=self._read, daemon=True).start()
        self.url: str = wait_for(self._url, 30, what=f"the dashboard's URL ({self.lines})")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _url(self) -> str | None:
        if self.proc.poll() is not None:
            if self.proc.stderr and not self.errors:
                self.errors = self.proc.stderr.read()
            raise RuntimeError(
                f"kubectl-hotswap dashboard exited {self.proc.returncode}: {self.errors}"
            )
        return next((line for line in self.lines if line.startswith("http://")), None)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> DashboardProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
