"""Start a throwaway PostgreSQL (15 or newer) server on loopback, for tests and laptops.

``initdb`` (trust auth for one local superuser, UTF8, C locale) into a folder, then the
``postgres`` binary itself, supervised by ``deploy.local.process``: listening only on
127.0.0.1 on a free port, its unix socket in the data folder, its log in
``<dir>/postgres.log``; then the database ``wattmeter`` is created. By default
(``durable=False``) the cluster trades crash safety for speed: ``initdb --no-sync`` and
``fsync=off``, ``synchronous_commit=off``, ``full_page_writes=off``, fine for a test
cluster that is thrown away, never for data you keep.

The binaries come from ``$WATTMETER_PG_BINDIR``, else the highest version >= 15 among
``pg_config --bindir``, ``initdb`` on PATH and ``/usr/lib/postgresql/*/bin``. As root
(initdb refuses to run as root) the server runs as the ``postgres`` system user.

    python -m deploy.local.postgres start|stop|status|run [--dir .wattmeter/pg]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local.process import ChildProcess, PartUnavailable, free_port, part_cli, pid_running, stop_pid

MIN_MAJOR = 15
DEFAULT_DIR = Path(".wattmeter/pg")
SEARCH_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
FAST_OPTIONS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
INSTALL_HINT = "apt-get install postgresql-15 (or `make system-deps`)"


class PostgresUnavailable(PartUnavailable):
    """No PostgreSQL server could be started; the message names what is missing."""


def _major(bindir: Path) -> int:
    try:
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    found = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
    return int(found.group(1)) if found else 0


def find_bindir(min_major: int = MIN_MAJOR) -> Path:
    """The folder holding ``initdb`` and ``postgres`` of the highest version >= ``min_major``."""
    if os.environ.get("WATTMETER_PG_BINDIR"):
        candidates = [os.environ["WATTMETER_PG_BINDIR"]]
    else:
        candidates = [os.path.dirname(os.path.realpath(p)) for p in (shutil.which("initdb"),) if p]
        if shutil.which("pg_config"):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(out.stdout.strip())
        candidates += [d for pattern in SEARCH_GLOBS for d in glob.glob(pattern)]
    found = {
        (_major(Path(d)), d)
        for d in {os.path.realpath(c) for c in candidates if c}
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(os.path.join(d, "postgres"), os.X_OK)
    }
    usable = sorted(v for v in found if v[0] >= min_major)
    if not usable:
        older = f" (only version {', '.join(str(m) for m, _ in sorted(found))} found)" if found else ""
        raise PostgresUnavailable(
            f"PostgreSQL {min_major}+ server binaries (initdb, postgres) not found{older}: {INSTALL_HINT}"
        )
    return Path(usable[-1][1])


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) of the ``postgres`` user when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "running as root, and initdb refuses root, but there is no `postgres` system user to run the server "
            "as: `useradd --system postgres` (the postgresql package creates it) or run as a normal user"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _check_reachable(folder: Path, uid: int, gid: int) -> None:
    for parent in [folder, *folder.parents]:
        mode = parent.stat()
        if not (
            mode.st_mode & stat.S_IXOTH or (mode.st_gid == gid and mode.st_mode & stat.S_IXGRP) or mode.st_uid == uid
        ):
            raise PostgresUnavailable(
                f"{parent} (mode {stat.filemode(mode.st_mode)}) cannot be entered by the postgres user that runs the "
                f"server: put the PostgreSQL folder elsewhere (e.g. under /tmp)"
            )


@dataclass
class PostgresServer:
    """A PostgreSQL server whose data, log and ``postgres.json`` live in ``base_dir``."""

    base_dir: Path
    port: int = 0
    user: str = "postgres"
    database: str = "wattmeter"
    durable: bool = False
    temporary: bool = False  # stop() removes base_dir
    pid: int | None = None
    _child: ChildProcess | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``wattmeter`` database."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str | None = None) -> str:
        """libpq/psycopg connection string."""
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={database or self.database}"

    def alive(self) -> bool:
        if self._child is not None:
            return self._child.alive()
        return self.pid is not None and pid_running(self.pid, str(self.data_dir))

    def answers(self, timeout_s: int = 2) -> bool:
        import psycopg

        try:
            psycopg.connect(self.conninfo("postgres"), connect_timeout=timeout_s).close()
        except psycopg.Error:
            return False
        return True

    def _on_database(self, statement: str, name: str) -> None:
        """CREATE/DROP DATABASE: with autocommit, they cannot run in a transaction."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL(statement).format(sql.Identifier(name)))

    def create_database(self, name: str) -> str:
        """Create the (empty) database ``name``; its SQLAlchemy URL."""
        self._on_database("CREATE DATABASE {}", name)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting whoever is still connected to it."""
        self._on_database("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    def start(self, timeout_s: float = 30) -> None:
        """initdb (unless the data folder holds a cluster already), start, wait, create ``database``."""
        bindir = find_bindir()
        run_as = _run_as()
        self.base_dir = self.base_dir.resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            os.chown(self.base_dir, *run_as)
            _check_reachable(self.base_dir, *run_as)
        uid, gid = run_as or (None, None)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bindir, uid, gid)
        elif (made_by := (self.data_dir / "PG_VERSION").read_text().strip()) != str(_major(bindir)):
            raise PostgresUnavailable(
                f"{self.data_dir} holds a PostgreSQL {made_by} cluster, the server is "
                f"{_major(bindir)}: remove the folder (or set WATTMETER_PG_BINDIR)"
            )
        self.port = free_port()
        socket_dir = str(self.data_dir) if len(f"{self.data_dir}/.s.PGSQL.{self.port}") < 100 else ""
        options = [] if self.durable else FAST_OPTIONS
        command = [str(bindir / "postgres"), "-D", str(self.data_dir), "-h", "127.0.0.1", "-p", str(self.port)]
        command += ["-k", socket_dir, *(a for o in options for a in ("-c", o))]
        self._child = ChildProcess("PostgreSQL", command, self.log_path, self.base_dir, None, uid, gid, signal.SIGINT)
        self._child.start(lambda: self.answers(1), timeout_s, PostgresUnavailable)
        self.pid = self._child.pid
        try:
            import psycopg

            with psycopg.connect(self.conninfo("postgres")) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                self.create_database(self.database)
        except BaseException:
            self.stop()
            raise
        info = {"pid": self.pid, "port": self.port, "user": self.user, "database": self.database, "url": self.url}
        (self.base_dir / "postgres.json").write_text(json.dumps(info, indent=2) + "\n")

    def _initdb(self, bindir: Path, uid: int | None, gid: int | None) -> None:
        command = [str(bindir / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", self.user]
        command += ["-E", "UTF8", "--locale=C", *([] if self.durable else ["--no-sync"])]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=120, cwd=self.base_dir, user=uid, group=gid
            )
        except subprocess.TimeoutExpired:
            raise PostgresUnavailable(f"initdb did not finish within 120 s in {self.data_dir}") from None
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed (exit {done.returncode})", (done.stdout + done.stderr)[-3000:])

    def stop(self, timeout_s: float = 15) -> None:
        """Fast shutdown (SIGINT to the server), SIGKILL after ``timeout_s``. Safe twice.
        A temporary ``base_dir`` is removed."""
        if self._child is not None:
            self._child.stop(timeout_s)
        elif self.pid is not None and self.alive():
            stop_pid(self.pid, timeout_s, signal.SIGINT)
        self._child, self.pid = None, None
        (self.base_dir / "postgres.json").unlink(missing_ok=True)
        if self.temporary:
            shutil.rmtree(self.base_dir, ignore_errors=True)


def start_postgres(
    base_dir: Path | None = None, *, durable: bool = False, user: str = "postgres", timeout_s: float = 30
) -> PostgresServer:
    """A running server. Without ``base_dir`` it lives in a temporary folder that
    ``stop()`` removes; a given folder is kept (its cluster is reused next time)."""
    if base_dir is None:
        base_dir, temporary = Path(tempfile.mkdtemp(prefix="wattmeter-pg-")), True
    else:
        leftover, temporary = load_server(base_dir), False
        if leftover is not None:
            leftover.stop()
    server = PostgresServer(Path(base_dir), user=user, durable=durable, temporary=temporary)
    try:
        server.start(timeout_s)
    except BaseException:
        server.temporary = False  # keep the log that the error names
        server.stop()
        if temporary:
            shutil.rmtree(server.data_dir if server.log_path.exists() else server.base_dir, ignore_errors=True)
        raise
    return server


def load_server(base_dir: Path) -> PostgresServer | None:
    """The running server that ``<base_dir>/postgres.json`` names, or None."""
    base_dir = Path(base_dir).resolve()
    try:
        info = json.loads((base_dir / "postgres.json").read_text())
        server = PostgresServer(base_dir, int(info["port"]), info["user"], info["database"], pid=int(info["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return server if server.alive() else None


# --------------------------------------------------------------------------- CLI


def _cli_start(folder: Path, args: argparse.Namespace) -> PostgresServer:
    running = load_server(folder) if args.command == "start" else None
    return running or start_postgres(folder, durable=args.durable, timeout_s=args.timeout)


def _describe(server: PostgresServer) -> str:
    return f"PostgreSQL {_major(find_bindir())}, pid {server.pid}"


def main(argv: list[str] | None = None) -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--durable", action="store_true", help="keep fsync and full page writes on")

    return part_cli(argv, "postgres", DEFAULT_DIR, load_server, _cli_start, lambda s: s.url, _describe, options)


if __name__ == "__main__":
    sys.exit(main())
