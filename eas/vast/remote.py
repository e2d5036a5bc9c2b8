"""An instance over SSH: run a command, rsync files to and from it.

Vast instances are reached as ``root@ssh_host -p ssh_port`` with the user's SSH key
(registered in the account). Host keys change with every instance: not recorded.
An rsync that fails the way a flaky link fails (connection lost or timed out) is tried
again (``RSYNC_ATTEMPTS`` in all); a command is run once (it need not be idempotent).
"""

from __future__ import annotations

import logging
import shlex
import socket
import subprocess
from dataclasses import dataclass

from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_exponential

log = logging.getLogger("eas")
# rsync's exit codes for a broken or timed-out link (10, 12, 30, 35) and ssh's own failure (255)
TRANSIENT_RSYNC = frozenset({10, 12, 30, 35, 255})
RSYNC_ATTEMPTS = 3  # waits 2 s, then 4 s between them


@dataclass
class Remote:
    host: str
    port: int
    user: str = "root"
    key: str | None = None  # private key file; None: ssh's default keys and agent
    connect_timeout_s: int = 15

    def ssh_args(self) -> list[str]:
        args = ["ssh", "-p", str(self.port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={self.connect_timeout_s}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if self.key:
            args += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        return args

    def port_open(self) -> bool:
        """Whether anything accepts a TCP connection at the SSH address."""
        try:
            with socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s):
                return True
        except OSError:
            return False

    def run(self, command: str, timeout_s: float | None = None, log=None) -> int:
        """Run a shell command on the instance; its output goes to ``log`` (a file) or ours."""
        argv = [*self.ssh_args(), f"{self.user}@{self.host}", command]
        try:
            return subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT if log else None,
                                  timeout=timeout_s, check=False).returncode
        except subprocess.TimeoutExpired:
            return 124

    def rsync(self, src: str, dst: str, excludes: tuple[str, ...] = (), timeout_s: float | None = None) -> int:
        """``rsync -a`` one way; a remote side is written ``:path``."""
        def side(p: str) -> str:
            return f"{self.user}@{self.host}{p}" if p.startswith(":") else p

        argv = ["rsync", "-a", "--mkpath", "-e", shlex.join(self.ssh_args())]
        argv += [f"--exclude={e}" for e in excludes] + [side(src), side(dst)]

        def once() -> int:
            try:
                return subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False).returncode
            except subprocess.TimeoutExpired:
                return 124

        retrying = Retrying(stop=stop_after_attempt(RSYNC_ATTEMPTS), wait=wait_exponential(multiplier=2, max=8),
                            retry=retry_if_result(lambda rc: rc in TRANSIENT_RSYNC), retry_error_callback=
                            lambda state: state.outcome.result(),  # the last exit code, not an exception
                            before_sleep=lambda state: log.info("rsync %s -> %s: exit %s, trying again", src, dst,
                                                                state.outcome.result()))
        return retrying(once)
