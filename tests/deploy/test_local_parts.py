"""The local real parts themselves: the process helper and the PostgreSQL launcher."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from deploy.local import postgres
from deploy.local.process import ChildProcess, StartupFailed, pid_running, port_open

ROOT = Path(__file__).resolve().parents[2]


def test_a_child_that_dies_while_starting_is_reported_with_its_log_tail(tmp_path: Path) -> None:
    script = "import sys; print('reading config.toml'); print('fatal: no such setting: prot'); sys.exit(3)"
    child = ChildProcess("the doomed part", [sys.executable, "-c", script], tmp_path / "logs" / "doomed.log")
    with pytest.raises(StartupFailed) as failure:
        child.start(probe=lambda: False, timeout_s=30)
    assert "the doomed part exited with status 3 while starting" in str(failure.value)
    assert "fatal: no such setting: prot" in str(failure.value)  # the log tail
    assert failure.value.log_path == tmp_path / "logs" / "doomed.log"
    assert "fatal: no such setting: prot" in failure.value.one_line() and str(tmp_path) in failure.value.one_line()


def test_a_child_that_never_answers_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    child = ChildProcess("the silent part", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log")
    with pytest.raises(StartupFailed, match="the silent part did not answer within 0.5 s"):
        child.start(probe=lambda: False, timeout_s=0.5)
    assert child.pid is not None and not pid_running(child.pid)


@pytest.mark.postgres
def test_postgres_starts_answers_makes_databases_and_stops() -> None:
    server = postgres.start_postgres()
    pid = server.pid
    try:
        assert pid is not None and pid_running(pid)
        assert server.url == f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/wattmeter"
        with psycopg.connect(server.conninfo()) as conn:
            ((version,),) = conn.execute("select version()").fetchall()
            ((listen,),) = conn.execute("show listen_addresses").fetchall()
        major = re.match(r"PostgreSQL (\d+)\.", version)
        assert major and int(major.group(1)) >= 15, version
        assert listen == "127.0.0.1"
        assert list(server.data_dir.glob(".s.PGSQL.*"))  # the unix socket lives in the data folder
        other = server.create_database("second_db")
        engine = sa.create_engine(other)
        with engine.connect() as conn:
            assert conn.execute(sa.text("select current_database()")).scalar() == "second_db"
        engine.dispose()
        assert "database system is ready to accept connections" in server.log_path.read_text()
    finally:
        server.stop()
    assert not pid_running(pid)
    assert not port_open("127.0.0.1", server.port)
    assert not server.base_dir.exists()  # the temporary folder is gone


@pytest.mark.postgres
def test_postgres_cli_start_status_stop_keeps_the_cluster() -> None:
    folder = Path(tempfile.mkdtemp(prefix="wattmeter-pg-cli-"))  # not under pytest's 0700 tmp: postgres must enter it
    cli = [sys.executable, "-m", "deploy.local.postgres"]
    try:
        started = subprocess.run([*cli, "start", "--dir", str(folder)], capture_output=True, text=True, cwd=ROOT)
        assert started.returncode == 0, started.stderr
        url = started.stdout.strip().splitlines()[-1]
        assert url.startswith("postgresql+psycopg://postgres@127.0.0.1:") and url.endswith("/wattmeter")
        status = subprocess.run([*cli, "status", "--dir", str(folder)], capture_output=True, text=True, cwd=ROOT)
        assert status.returncode == 0 and url in status.stdout
        stopped = subprocess.run([*cli, "stop", "--dir", str(folder)], capture_output=True, text=True, cwd=ROOT)
        assert stopped.returncode == 0, stopped.stderr
        status = subprocess.run([*cli, "status", "--dir", str(folder)], capture_output=True, text=True, cwd=ROOT)
        assert status.returncode == 1 and "not running" in status.stdout
        assert (folder / "data" / "PG_VERSION").exists()  # a given folder is kept for the next start
    finally:
        subprocess.run([*cli, "stop", "--dir", str(folder)], capture_output=True, cwd=ROOT)
        shutil.rmtree(folder, ignore_errors=True)


def test_missing_server_binaries_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("WATTMETER_PG_BINDIR", raising=False)
    monkeypatch.setattr(postgres, "SEARCH_GLOBS", (str(tmp_path / "*" / "bin"),))
    with pytest.raises(
        postgres.PostgresUnavailable, match=r"initdb, postgres\) not found: apt-get install postgresql-15"
    ):
        postgres.start_postgres()


def test_each_test_gets_a_fresh_empty_database(billing_db_url: str, request: pytest.FixtureRequest) -> None:
    engine = sa.create_engine(billing_db_url)
    try:
        assert engine.dialect.name == request.node.callspec.params["billing_db_url"]
        with engine.begin() as conn:
            assert sa.inspect(conn).get_table_names() == []
            conn.execute(sa.text("create table probe (n integer)"))
            conn.execute(sa.text("insert into probe values (1)"))
            assert conn.execute(sa.text("select count(*) from probe")).scalar() == 1
    finally:
        engine.dispose()
