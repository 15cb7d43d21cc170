"""`make run` as a user runs it: one `bazaar run-all` in a directory, everything in ./data.

For tests that follow the docs natively (README, docs/configuration.md,
docs/troubleshooting.md, docs/releasing.md's upgrade). The process is
`python -m bazaar.cli run-all` (what `make run` runs as `.venv/bin/bazaar
run-all`) started in `workdir` in a session of its own, with free ports in
the BAZAAR_* endpoints and neither BAZAAR_DATA_DIR nor BAZAAR_KEYS_DIR: it
keeps its databases and keys in `<workdir>/data`, as on a fresh checkout.
`stop()` is Ctrl-C in its terminal: SIGINT to the whole process group.

Which code runs: with `checkout=True`, the `bazaar` package of `workdir`
itself (a git checkout of an older release: `python -m` puts the current
directory first on sys.path, for run-all and the five children it starts);
otherwise the installed one, this checkout's (PYTHONSAFEPATH keeps a
`bazaar/` in `workdir` out of the way).

The output goes to `<log_dir>/run-all.log`; waits fail at once, with its
tail, if run-all exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bazaar.testing.http_client import healthy, http_json
from bazaar.testing.ports import free_port
from bazaar.testing.waiting import wait_until

LOG_NAME = "run-all.log"


@dataclass
class MakeRun:
    workdir: Path
    log_dir: Path
    checkout: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def __post_init__(self):
        self.workdir, self.log_dir = Path(self.workdir), Path(self.log_dir)
        if not self.ports:  # the same ports for every run of this object: restarts keep them
            names = ("catalog", "pub", "order1", "order2", "order3", "http")
            self.ports = {name: free_port() for name in names}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def endpoint(self, name: str) -> str:
        return f"tcp://127.0.0.1:{self.ports[name]}"

    def env(self) -> dict[str, str]:
        """The environment of a shell in `workdir` that knows this bazaar's ports."""
        env = dict(os.environ)
        for var in ("BAZAAR_DATA_DIR", "BAZAAR_KEYS_DIR", "BAZAAR_INSECURE", "PYTHONSAFEPATH"):
            env.pop(var, None)
        env.update(
            BAZAAR_CATALOG=self.endpoint("catalog"),
            BAZAAR_CATALOG_PUB=self.endpoint("pub"),
            BAZAAR_ORDER_REPLICAS=",".join(f"{r}={self.endpoint(f'order{r}')}" for r in (1, 2, 3)),
            BAZAAR_HTTP_PORT=str(self.ports["http"]),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self) -> MakeRun:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("run-all is already running")
        env = self.env()
        if not self.checkout:
            env["PYTHONSAFEPATH"] = "1"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / LOG_NAME, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bazaar.cli", "run-all"],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as in a terminal
            )
        return self

    def stop(self, timeout: float = 60.0) -> int:
        """Ctrl-C: SIGINT to run-all and its five children; their exit status (run-all's)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else 0
        try:
            os.killpg(proc.pid, signal.SIGINT)
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise
        finally:
            self.proc = None

    def log(self) -> str:
        path = self.log_dir / LOG_NAME
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_until(self, cond, timeout: float, interval: float = 0.1, msg: str = ""):
        watched = {"run-all": self.proc} if self.proc is not None else None
        return wait_until(cond, timeout, interval, msg, processes=watched, log_dir=self.log_dir)

    def http(self, method: str, path: str, body=None, headers=None, timeout: float = 10.0):
        return http_json(self.url, method, path, body, headers, timeout)

    def wait_healthy(self, timeout: float = 120.0) -> dict:
        def ok():
            return healthy(*self.http("GET", "/health", timeout=3))

        return self.wait_until(ok, timeout, 0.2, "`make run` healthy")

    def __enter__(self) -> MakeRun:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
