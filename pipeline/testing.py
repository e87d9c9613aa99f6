"""Programs as real processes, for the tests and benchmarks (as glpn/testing.py is for models):
`depthstream` hubs, workers and cameras, their log lines watched as they come, so a test waits
for a line instead of sleeping, and their CPU time once reaped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository (or site)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment, the repository importable, output unbuffered, plus `extra`."""
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


class Program:
    """`python -m pipeline.cli ARGS` (or `entry`, e.g. ("-c", SCRIPT)), optionally under a prefix
    such as `ip netns exec NS`; its stdout+stderr lines kept with their arrival time."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        prefix: Sequence[str] = (),
        entry: Sequence[str] = ("-m", "pipeline.cli"),
        cwd: str = ROOT,
        env: Mapping[str, str] | None = None,  # added to child_env()
    ) -> None:
        self.args = list(args)
        self.lines: list[tuple[float, str]] = []
        self.cpu_s: float | None = None  # user + system CPU seconds, once wait() reaped it
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, *entry, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env=child_env(env),
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

    def _fail(self, what: str) -> AssertionError:
        return AssertionError(f"{' '.join(self.args[:3])}: {what}; output:\n{self.output[-3000:]}")

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
                if left <= 0 or not self._reader.is_alive():
                    raise self._fail(f"no line matching {pattern!r} within {timeout} s")
                self._cond.wait(min(left, 0.5))

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.returncode is None:
            os.kill(self.proc.pid, sig)  # not poll(): wait() reaps it, for its CPU time

    def wait(self, timeout: float) -> int:
        """The exit code once it ended (its output closed), reaped with os.wait4 for `cpu_s`;
        AssertionError (with the output) if it did not end in time."""
        self._reader.join(timeout)
        if self._reader.is_alive():
            raise self._fail(f"still running after {timeout} s")
        if self.proc.returncode is None:
            _, status, usage = os.wait4(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            self.cpu_s = usage.ru_utime + usage.ru_stime
        return self.proc.returncode

    def cpu_now(self) -> float:
        """CPU seconds used so far (Linux: /proc/PID/stat utime + stime)."""
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        """Kill it if still running (a test's finally)."""
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)

    def __enter__(self) -> Program:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
