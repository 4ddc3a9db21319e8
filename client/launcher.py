"""Start the services as subprocesses on free loopback ports, and stop them after.

A service prints "specdec-ready HOST:PORT" once loaded and listening (no port is guessed), then
"specdec-compiled HOST:PORT" once its background step graphs are built. Start-up fails when a
service exits first, or goes `timeout_s` without a line of output (a long compile logs each
graph, so progress is never cut short). One that cannot start prints one line "error: ..." and
exits; that line is kept, not echoed, for the caller to report once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from specdec.errors import ERROR_PREFIX
from specdec_rpc.server import COMPILED_PREFIX, LISTENING_PREFIX, METRICS_PREFIX, READY_PREFIX

QUIET_TIMEOUT_S = 300.0   # start-up fails after this long without a line of output
STDERR_EOF_WAIT_S = 2.0   # for the last lines of a service that has exited


class ServiceStartError(RuntimeError):
    """A service exited, or went silent, before it was ready."""


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen
    address: str = ""
    metrics_address: str = ""       # host:port of /metrics, when the service serves it
    stderr_tail: deque = field(default_factory=lambda: deque(maxlen=40))
    ready: threading.Event = field(default_factory=threading.Event)
    cmd: list[str] = field(default_factory=list)
    timeout_s: float = QUIET_TIMEOUT_S
    last_output: float = field(default_factory=time.monotonic)  # time.monotonic() of the last line
    stopped: bool = False           # stop() has run
    compiled: threading.Event = field(default_factory=threading.Event)
    # time.monotonic() of the process start and of its ready and compiled lines (None: not yet)
    started_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    compiled_at: float | None = None
    error: str = ""                 # the service's own "error: ..." line, without the prefix
    stderr_done: threading.Event = field(default_factory=threading.Event)  # its stderr ended

    def wait_ready(self) -> None:
        """Block until the service printed its ready line (ServiceStartError: see check_start)."""
        wait_all_ready([self])

    def check_start(self) -> None:
        """Raise ServiceStartError if the service has exited, or gone `timeout_s` without a
        line of output: with its own error line where it printed one, else its log tail."""
        if self.proc.poll() is None and time.monotonic() - self.last_output <= self.timeout_s:
            return
        # (before stop(), which gives a timed-out service a return code too)
        why = "exited" if self.proc.returncode is not None else "timed out"
        self.stop()   # (which waits for the last lines: the error line may still be in the pipe)
        if self.error:
            raise ServiceStartError(f"{self.name} could not start: {self.error}")
        raise ServiceStartError(f"{self.name} {why} before it was ready: {self._last_words()}")

    def wait_compiled(self, timeout_s: float) -> bool:
        """Block until the service printed its compiled line: True; False when it exits, or
        goes `timeout_s` without a line of output (each graph it builds logs a line), first."""
        while not self.compiled.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() - self.last_output > timeout_s:
                return False
        return True

    def _last_words(self) -> str:
        """The command line and the log tail of a service that has exited."""
        self.stderr_done.wait(STDERR_EOF_WAIT_S)  # let the stderr reader catch the last lines
        return f"{' '.join(self.cmd)}\n" + ("\n".join(self.stderr_tail) or "(no output)")

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Stop the service. One that had exited on its own after it was ready (a crash its
        clients see only as an unreachable service) has its log tail printed first."""
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the service drains and exits 0
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.ready.is_set() and not self.stopped:
            print(f"{self.name} had exited with code {self.proc.returncode} before it was "
                  f"stopped: {self._last_words()}", file=sys.stderr)
        self.stderr_done.wait(STDERR_EOF_WAIT_S)   # its last lines are echoed before we go on
        self.stopped = True
        return self.proc.returncode


def start_service(name: str, module: str, args: list[str], timeout_s: float = QUIET_TIMEOUT_S,
                  echo_stderr: bool = False, port: int = 0, wait_for: str = READY_PREFIX,
                  env: dict[str, str] | None = None, wait: bool = True) -> ServiceProcess:
    """wait_for: READY_PREFIX (model loaded, SERVING), LISTENING_PREFIX (bound, loading) or
    COMPILED_PREFIX (ready, and its step graphs built: what a benchmark times).
    timeout_s: the longest start-up may go without a line of output (stdout or stderr).
    wait=False returns at once, for `svc.wait_ready()` later (services then start side by side)."""
    cmd = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port), *args]
    started_at = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    svc = ServiceProcess(name, proc, timeout_s=timeout_s, started_at=started_at)
    ready = threading.Event()
    threading.Thread(target=_drain_stderr, args=(svc, echo_stderr), daemon=True).start()
    threading.Thread(target=_read_stdout, args=(svc, wait_for, ready), daemon=True).start()
    svc.ready, svc.cmd = ready, cmd
    if wait:
        svc.wait_ready()
    return svc


def _drain_stderr(svc: ServiceProcess, echo: bool) -> None:
    """The service's log lines: kept (the tail), its error line noted, echoed if asked."""
    assert svc.proc.stderr is not None  # stderr=PIPE
    for line in svc.proc.stderr:
        svc.last_output = time.monotonic()
        svc.stderr_tail.append(line.rstrip())
        if line.startswith(ERROR_PREFIX):
            svc.error = line[len(ERROR_PREFIX):].strip()   # reported by whoever waits
        elif echo:
            print(f"[{svc.name}] {line.rstrip()}", file=sys.stderr)
    svc.stderr_done.set()


def _read_stdout(svc: ServiceProcess, wait_for: str, ready: threading.Event) -> None:
    """The service's status lines: its address, metrics address, ready and compiled times;
    `ready` set at the line the caller waits for."""
    assert svc.proc.stdout is not None  # stdout=PIPE
    for line in svc.proc.stdout:
        now = svc.last_output = time.monotonic()
        prefix, _, rest = line.strip().partition(" ")
        if prefix == METRICS_PREFIX:
            svc.metrics_address = rest
        elif prefix in (LISTENING_PREFIX, READY_PREFIX):
            svc.address = rest
            if prefix == READY_PREFIX:
                svc.ready_at = now
        elif prefix == COMPILED_PREFIX:
            svc.compiled_at = now
            svc.compiled.set()
        if prefix == wait_for:
            ready.set()


def wait_all_ready(services: list[ServiceProcess]) -> None:
    """Block until every service printed its ready line. The first to fail raises at once, so
    a proposer whose model is not there ends the wait while the verifier is still loading."""
    while pending := [svc for svc in services if not svc.ready.is_set()]:
        for svc in pending:
            svc.check_start()
        pending[0].ready.wait(0.1)
