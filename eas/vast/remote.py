"""An instance over SSH: run a command, rsync files to and from it.

Vast instances are reached as ``root@ssh_host -p ssh_port`` with the user's SSH key
(registered in the account). Host keys change with every instance: not recorded.
``python -m eas.vast.remote FOLDER`` is also what runs a submitit job on the instance.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass


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
        try:
            return subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False).returncode
        except subprocess.TimeoutExpired:
            return 124


def main(folder: str) -> None:
    """Run one submitit job on the instance. The job environment is registered by hand, so
    the instance needs eas importable (PYTHONPATH) but not installed with its entry points."""
    from submitit.core import plugins, submission

    from eas.vast.executor import VastJobEnvironment

    os.environ.setdefault("SUBMITIT_EXECUTOR", "vast")
    plugins.get_job_environments()["vast"] = VastJobEnvironment()  # type: ignore[index]
    submission.process_job(folder)


if __name__ == "__main__":
    main(sys.argv[1])
