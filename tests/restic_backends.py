"""Real restic backends for tests and benchmarks, each started on loopback: a repository directory, a REST server
(Debian's `rclone serve restic`) and an SFTP server (Debian's openssh-server as a non-daemon `sshd -D` with a host
key and a client key made here); and the stores file that names them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .procs import free_port, wait_for

__all__ = ["Backends", "RestServer", "SftpServer", "restic_env", "write_stores"]

SSHD = "/usr/sbin/sshd"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class RestServer:
    """`rclone serve restic` over a directory: repositories at `rest:http://127.0.0.1:<port>/<name>/`."""

    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RestServer:
        if shutil.which("rclone") is None:
            raise RuntimeError("rclone is not installed; run scripts/test, which installs it")
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        with open(self.root.parent / f"rclone-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(["rclone", "serve", "restic", "--addr", f"127.0.0.1:{self.port}",
                                          str(self.root)], stdout=log, stderr=log, start_new_session=True)
        wait_for(lambda: _listening(self.port), 15, "rclone serve restic", self.proc)
        return self

    def repository(self, name: str) -> str:
        return f"rest:http://127.0.0.1:{self.port}/{name}/"

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class SftpServer:
    """A private sshd on loopback that lets one key in as root, for restic's sftp backend (`sftp.command`)."""

    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    key: Path = field(init=False)
    known_hosts: Path = field(init=False)

    def start(self) -> SftpServer:
        if not os.access(SSHD, os.X_OK):
            raise RuntimeError("openssh-server is not installed; run scripts/test, which installs it")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        host_key, self.key = self.root / "host_ed25519", self.root / "client_ed25519"
        for k in (host_key, self.key):
            if not k.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
        (self.root / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        self.port = free_port()
        self.known_hosts = self.root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {Path(f'{host_key}.pub').read_text()}")
        conf = self.root / "sshd_config"
        conf.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"AuthorizedKeysFile {self.root}/authorized_keys",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", f"PidFile {self.root}/sshd.pid", "Subsystem sftp internal-sftp",
            "LogLevel ERROR", "",
        ]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        with open(self.root / "sshd.log", "ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(conf), "-p", str(self.port)],
                                         stdout=log, stderr=log, start_new_session=True)
        wait_for(lambda: _listening(self.port), 15, "sshd", self.proc)
        return self

    def repository(self, path: Path) -> str:
        return f"sftp:root@127.0.0.1:{path}"

    def command(self) -> str:
        """restic's `sftp.command`: ssh with the test's key, checking the test's host key."""
        return (f"ssh -i {self.key} -p {self.port} -o BatchMode=yes -o StrictHostKeyChecking=yes "
                f"-o UserKnownHostsFile={self.known_hosts} root@127.0.0.1 -s sftp")

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class Backends:
    """The three kinds of repository location the tests use, and a password for them all."""

    root: Path
    rest: RestServer
    sftp: SftpServer
    password_file: Path

    @classmethod
    def start(cls, root: Path) -> Backends:
        root.mkdir(parents=True, exist_ok=True)
        pw = root / "restic.pass"
        pw.write_text("correct horse battery staple\n")
        os.chmod(pw, 0o600)
        return cls(root, RestServer(root / "rest").start(), SftpServer(root / "sftp").start(), pw)

    def stop(self) -> None:
        self.rest.stop()
        self.sftp.stop()

    def store(self, kind: str, repo: str, **extra: object) -> dict[str, object]:
        """A store's table for the stores file: `kind` is local, rest or sftp; `repo` names a new repository."""
        entry: dict[str, object] = {"kind": "restic", "password_file": str(self.password_file), "init": True,
                                    "cache_dir": str(self.root / "cache")}
        if kind == "local":
            entry["repository"] = str(self.root / "local" / repo)
        elif kind == "rest":
            entry["repository"] = self.rest.repository(repo)
        else:
            (self.root / "sftp-data").mkdir(exist_ok=True)
            entry["repository"] = self.sftp.repository(self.root / "sftp-data" / repo)
            entry["options"] = {"sftp.command": self.sftp.command()}
        entry.update(extra)
        return entry


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + " }"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_stores(path: Path, stores: dict[str, dict[str, object]]) -> Path:
    """A stores file (TOML) defining `stores` by name."""
    lines = []
    for name, entry in stores.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    os.chmod(path, 0o600)
    return path


def restic_env(entry: dict[str, object]) -> tuple[list[str], dict[str, str]]:
    """restic's argv prefix and environment for a store's table: what a test runs restic by hand with."""
    argv = ["restic", "--repo", str(entry["repository"]), "--password-file", str(entry["password_file"])]
    if "cache_dir" in entry:
        argv += ["--cache-dir", str(entry["cache_dir"])]
    for k, v in dict(entry.get("options") or {}).items():  # type: ignore[call-overload]
        argv += ["--option", f"{k}={v}"]
    return argv, {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
