"""A throwaway PostgreSQL server from Debian's packages, for tests of studies shared by several workers.

`running_postgres()` finds initdb and pg_ctl under /usr/lib/postgresql/*/bin (installing the `postgresql` package
first when it is missing and this is root with apt-get, as `make postgres` does), makes a cluster in a temporary
folder and serves it on 127.0.0.1 only, on a free port, with its unix socket in that folder. PostgreSQL refuses to
run as root: as root the server runs as `nobody`. The server is stopped and its folder removed on exit.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

SUPERUSER = "deploybench"


def _bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl, or None."""
    found = [
        Path(d)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if os.access(Path(d) / "initdb", os.X_OK) and os.access(Path(d) / "pg_ctl", os.X_OK)
    ]
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0) if found else None


def postgres_bin_dir() -> tuple[Path | None, str]:
    """(bin dir, why there is none): installs Debian's `postgresql` when missing, if this is root with apt-get."""
    if (found := _bin_dir()) is not None:
        return found, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "PostgreSQL is not installed (apt-get install postgresql, or run make postgres as root)"
    done = subprocess.run(
        "apt-get update -qq && apt-get install -y -qq postgresql",
        shell=True,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
    )
    if (found := _bin_dir()) is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"apt-get could not install postgresql: {tail[0]}"
    return found, ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_postgres(bin_dir: Path) -> Iterator[str]:
    """Serve a fresh cluster; yields its URL (`postgresql://deploybench@127.0.0.1:PORT/postgres`, trust auth)."""
    root = Path(tempfile.mkdtemp(prefix="deploybench-pg-"))
    as_user: dict = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        as_user = dict(user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
    env = dict(os.environ, LC_ALL="C", LANG="C")

    def pg(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(bin_dir / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            check=check,
            env=env,
            cwd=root,
            timeout=120,
            **as_user,
        )

    data, port = root / "data", _free_port()
    try:
        pg("initdb", "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
        # Tests only: no fsync; TCP on loopback alone; the socket in the temporary folder, not /var/run.
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=40"
        started = pg(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
            check=False,
        )
        if started.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()}\n{log[-2000:]}")
        yield f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
