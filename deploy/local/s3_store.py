"""A real S3-compatible object store on loopback, started by the tests, the demo and the bench:
SeaweedFS (Apache-2.0, github.com/seaweedfs/seaweedfs), master, volume, filer and S3 gateway in
one `weed server` process, in a temporary folder, every port a free 127.0.0.1 one.

The binary is built once into the cache (``$WATTMETER_CACHE_DIR/bin/weed``, like stripe-mock and
the Kafka jars) at the version pinned below. SeaweedFS's go.mod has a `replace` directive, which
`go install pkg@version` refuses, so the build is `go mod download` of the pinned module, then
`go build ./weed` inside it (``make seaweedfs``; ``ensure_weed()`` does the same when it is missing;
about 6 minutes on two cores with an empty Go module cache, under a file lock).

The store has one identity (ACCESS_KEY / SECRET_KEY, Admin) and one bucket, ``wattmeter``, made
at start. ``S3Store.env()`` is what a wattmeter process needs to use it: ``WATTMETER_S3_ENDPOINT``
and the standard AWS variables (lake/store.py reads them).

    python -m deploy.local.s3_store run      # until Ctrl-C; prints the endpoint
    python -m deploy.local.s3_store path     # build weed if missing; its path
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local.process import ChildProcess, PartUnavailable, file_lock, free_port, run_until_stopped

BIN_DIR = Path(os.environ.get("WATTMETER_CACHE_DIR") or Path.home() / ".cache" / "wattmeter") / "bin"
WEED_BIN = BIN_DIR / "weed"
SEAWEEDFS_MODULE = "github.com/seaweedfs/seaweedfs"
SEAWEEDFS_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"  # weed 4.53, 2026-11-09
ACCESS_KEY = "wattmeter"
SECRET_KEY = "wattmeter-secret-key"
BUCKET = "wattmeter"
GO_HINT = "install Go 1.22+ (https://go.dev/dl/), then `make seaweedfs`"


class S3StoreUnavailable(PartUnavailable):
    """The object store could not be had; one line says why and what to do."""


@dataclass
class S3Store:
    endpoint: str  # http://127.0.0.1:<port>
    process: ChildProcess
    folder: Path
    bucket: str = BUCKET
    temp: bool = field(default=True, repr=False)

    @property
    def address(self) -> str:
        return self.endpoint

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def alive(self) -> bool:
        return self.process.alive()

    def url(self, prefix: str) -> str:
        """The lake location `s3://<bucket>/<prefix>`."""
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def env(self) -> dict[str, str]:
        """The variables a wattmeter process (sink, billing) needs to reach this store."""
        return {
            "WATTMETER_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> None:
        raise S3StoreUnavailable("start a new store with start_s3_store()")

    def stop(self) -> None:
        self.process.stop(timeout_s=3)  # weed lingers after SIGTERM; its data is a temporary folder
        if self.temp:
            shutil.rmtree(self.folder, ignore_errors=True)


def ensure_weed() -> Path:
    """The weed binary: ``$WATTMETER_WEED``, else the cache's, else built into the cache (pinned version)."""
    override = os.environ.get("WATTMETER_WEED")
    if override:
        if os.access(override, os.X_OK):
            return Path(override)
        raise S3StoreUnavailable(f"$WATTMETER_WEED={override} is not an executable file")
    if os.access(WEED_BIN, os.X_OK):
        return WEED_BIN
    go = shutil.which("go")
    if go is None:
        raise S3StoreUnavailable(f"SeaweedFS (weed) not found at {WEED_BIN} and `go` is not installed: {GO_HINT}")
    with file_lock(BIN_DIR / ".weed.lock"):
        if os.access(WEED_BIN, os.X_OK):  # built meanwhile by another process
            return WEED_BIN
        _build_weed(go)
    return WEED_BIN


def _build_weed(go: str) -> None:
    module = f"{SEAWEEDFS_MODULE}@{SEAWEEDFS_VERSION}"
    steps = [
        ([go, "mod", "download", "-json", module], None),
        ([go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(WEED_BIN), "./weed"], "module dir"),
    ]
    folder: str | None = None
    for command, where in steps:
        try:
            done = subprocess.run(
                command, cwd=folder if where else None, capture_output=True, text=True, timeout=1200, check=False
            )
        except subprocess.TimeoutExpired:
            raise S3StoreUnavailable(f"`{' '.join(command)}` did not finish within 1200 s") from None
        if done.returncode != 0:
            raise S3StoreUnavailable(
                f"`{' '.join(command)}` failed (exit {done.returncode}): it needs the Go module proxy",
                (done.stdout + done.stderr)[-3000:],
            )
        if where is None:
            folder = json.loads(done.stdout)["Dir"]


def _answers(endpoint: str) -> bool:
    """Whether the S3 gateway answers HTTP at all (403 to an unsigned request is an answer)."""
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def _make_bucket(store: S3Store, timeout_s: float) -> None:
    """Create the bucket and write, read and delete one object: the store is ready when that works
    (the gateway answers before the volume server has registered)."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        endpoint_override=store.endpoint,
        region="us-east-1",
        allow_bucket_creation=True,
        connect_timeout=2,
        request_timeout=5,
    )
    deadline = time.monotonic() + timeout_s
    probe = f"{store.bucket}/_probe/ready"
    while True:
        try:
            fs.create_dir(store.bucket)
            with fs.open_output_stream(probe) as out:
                out.write(b"ok")
            with fs.open_input_stream(probe) as stream:
                if stream.read() == b"ok":
                    fs.delete_dir(f"{store.bucket}/_probe")
                    return
        except OSError as exc:
            if time.monotonic() > deadline or not store.alive():
                store.stop()
                raise S3StoreUnavailable(
                    f"SeaweedFS at {store.endpoint} did not take a write within {timeout_s:g} s: {exc}",
                    store.process.log_tail(),
                    store.log_path,
                ) from None
        time.sleep(0.3)


def start_s3_store(timeout_s: float = 60) -> S3Store:
    """A running SeaweedFS on free loopback ports with the bucket made; ``stop()`` it."""
    binary = ensure_weed()
    folder = Path(tempfile.mkdtemp(prefix="wattmeter-s3-"))
    (folder / "data").mkdir()
    identities = {
        "identities": [
            {
                "name": "wattmeter",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (folder / "s3.json").write_text(json.dumps(identities))
    taken: set[int] = set()
    ports = {}
    for name in ("master", "volume", "filer", "s3"):
        for kind in ("", ".grpc"):
            ports[f"{name}.port{kind}"] = port = free_port(frozenset(taken))
            taken.add(port)
    command = [
        str(binary),
        "server",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-filer",
        "-s3",
        f"-s3.config={folder / 's3.json'}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=50",
        "-metricsPort=0",
        "-volume.preStopSeconds=0",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    process = ChildProcess("seaweedfs", command, folder / "weed.log")
    store = S3Store(f"http://127.0.0.1:{ports['s3.port']}", process, folder)
    process.start(lambda: _answers(store.endpoint), timeout_s, S3StoreUnavailable)
    _make_bucket(store, timeout_s)
    return store


@contextmanager
def running_s3_store(timeout_s: float = 60) -> Iterator[S3Store]:
    store = start_s3_store(timeout_s)
    try:
        yield store
    finally:
        store.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.s3_store")
    parser.add_argument("command", choices=["run", "path"])
    args = parser.parse_args(argv)
    try:
        if args.command == "path":
            print(ensure_weed())
            return 0
        return run_until_stopped(start_s3_store, "SeaweedFS S3", lambda store: store.endpoint)
    except PartUnavailable as exc:
        print(f"s3_store: {exc.one_line()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
