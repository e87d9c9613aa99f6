"""Programs of the distributed tests as real processes: `depthstream` hubs, workers and cameras,
with their log lines watched as they come (wait for a line instead of sleeping)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class Program:
    """`python -m pipeline.cli ARGS` (optionally under a prefix such as `ip netns exec NS`), its
    stderr+stdout lines collected with their arrival time."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        prefix: Sequence[str] = (),
        entry: Sequence[str] = ("-m", "pipeline.cli"),  # or ("-c", SCRIPT)
        cwd: str = ROOT,
    ) -> None:
        self.args = list(args)
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, *entry, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env=child_env(),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines)

    def wait_for(self, pattern: str, timeout: float, *, after: float = 0.0) -> tuple[float, str]:
        """(arrival time, line) of the first line matching `pattern` that arrived after `after`;
        AssertionError with the output so far when it did not come within `timeout`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, line in self.lines:
                    if t >= after and regex.search(line):
                        return t, line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout} s from "
                        f"{' '.join(self.args[:3])}; output:\n{self.output[-3000:]}"
                    )
                self._cond.wait(min(left, 0.5))

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit code; AssertionError (with the output) if it did not exit in time."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            output = self.output[-3000:]
            raise AssertionError(f"still running after {timeout} s:\n{output}") from None
        self._reader.join(5)
        return code

    def close(self) -> None:
        """Kill it if still running (a test's finally)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)

    def __enter__(self) -> Program:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
