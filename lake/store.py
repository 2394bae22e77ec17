"""Adapter: where the usage lake lives, a local folder or `s3://bucket/prefix` on any S3-compatible
store, behind one small interface over pyarrow's file systems.

The layout (schemas/lake.py) is the same on both. What differs is how a write becomes durable:
- a **folder** writes a temporary name, fsyncs it and renames it into place (POSIX rename is atomic);
- a **bucket** PUTs the object under its final key: an S3 PUT (or a completed multipart upload) is
  atomic per object, and readers never see part of one, so no rename is needed (S3 has none).
Either way the sink writes a partition's manifest only after its data objects, so the manifest
never names an offset whose records are not durable.

An S3 location is `s3://bucket/prefix`; the endpoint is `$WATTMETER_S3_ENDPOINT` (e.g.
`http://127.0.0.1:8333` for a store on loopback; unset: AWS), the credentials and region are the
standard `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_REGION` (default us-east-1).

DuckDB reads a bucket through the same pyarrow file system, handed to it as an fsspec file system
under the protocol `wmlake://` (`LakeStore.attach`): DuckDB's own httpfs extension is downloaded at
run time, which wattmeter never does, and a private protocol name keeps DuckDB from trying to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

S3_ENDPOINT_ENV = "WATTMETER_S3_ENDPOINT"
DUCKDB_PROTOCOL = "wmlake"
LakeLocation = str | os.PathLike[str]


class LakeError(RuntimeError):
    """The lake cannot be opened or read: one line naming the location."""


@dataclass(frozen=True)
class StoredFile:
    path: str  # the file system's path (a local absolute path, or bucket/key)
    folder: str  # the name of the folder holding it (e.g. date=2026-11-01)
    name: str


class LakeStore:
    """The lake at `location`: a folder (created on first write) or `s3://bucket/prefix`."""

    def __init__(self, location: LakeLocation) -> None:
        text = os.fspath(location)
        self.location = text
        if text.startswith("s3://"):
            parts = urlsplit(text)
            if not parts.netloc:
                raise LakeError(f"{text}: an S3 lake is s3://bucket/prefix")
            self.remote = True
            self.base = f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
            self.fs: pafs.FileSystem = _s3_filesystem()
        elif "://" in text:
            raise LakeError(f"{text}: a lake is a local folder or s3://bucket/prefix")
        else:
            self.remote = False
            self.base = str(Path(text).resolve())
            self.fs = pafs.LocalFileSystem()

    def __repr__(self) -> str:
        return f"LakeStore({self.location!r})"

    def path(self, *parts: str) -> str:
        """The file system path of `parts` under the lake's root."""
        return "/".join((self.base, *parts))

    def exists(self) -> bool:
        """Whether the lake is there: its folder, or its bucket (a prefix exists only once an object is
        under it, so an empty prefix of an existing bucket is an empty lake)."""
        try:
            info = self.fs.get_file_info(self.base.split("/", 1)[0] if self.remote else self.base)
        except OSError as exc:
            raise LakeError(f"cannot reach the usage lake at {self.location}: {_one_line(exc)}") from None
        return bool(info.type == pafs.FileType.Directory)

    def create(self, folder: str) -> None:
        """Make `folder` under a local lake (a bucket has no folders to make)."""
        if not self.remote:
            Path(self.path(folder)).mkdir(parents=True, exist_ok=True)

    def files(self, folder: str = "") -> list[StoredFile]:
        """Every file under `folder` (all of the lake when empty), at any depth; none if it is absent."""
        selector = pafs.FileSelector(self.path(folder) if folder else self.base, recursive=True, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise LakeError(f"cannot list the usage lake at {self.location}: {_one_line(exc)}") from None
        found = []
        for info in infos:
            if info.type == pafs.FileType.File:
                parent, _, name = info.path.rpartition("/")
                found.append(StoredFile(info.path, parent.rpartition("/")[2], name))
        return found

    def read_bytes(self, path: str) -> bytes | None:
        """The content of `path`, or None if there is no such file."""
        try:
            with self.fs.open_input_stream(path) as stream:
                data: bytes = stream.read()
                return data
        except FileNotFoundError:
            return None
        except OSError as exc:
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            raise LakeError(f"cannot read {path}: {_one_line(exc)}") from None

    def put(self, path: str, write: Any) -> None:
        """Make `path` durably hold what `write(stream)` writes, all or nothing: a folder writes a
        temporary name, fsyncs and renames it; a bucket PUTs the final key (atomic per object)."""
        if self.remote:
            with self.fs.open_output_stream(path) as stream:
                write(stream)
            return
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    def put_bytes(self, path: str, data: bytes) -> None:
        self.put(path, lambda stream: stream.write(data))

    def delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def duckdb_path(self, path: str) -> str:
        """How a DuckDB connection given `attach` names `path`."""
        return f"{DUCKDB_PROTOCOL}://{path}" if self.remote else path

    def attach(self, con: Any) -> None:
        """Let the DuckDB connection `con` read this lake's files (a bucket: through fsspec)."""
        if self.remote:
            con.register_filesystem(_duckdb_filesystem(self.fs))


def _s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get(S3_ENDPOINT_ENV) or None
    return pafs.S3FileSystem(
        endpoint_override=endpoint,
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        connect_timeout=5,
        request_timeout=30,
    )


def _duckdb_filesystem(fs: pafs.FileSystem) -> Any:
    from fsspec.implementations.arrow import ArrowFSWrapper

    class LakeFileSystem(ArrowFSWrapper):  # type: ignore[misc]
        """pyarrow's file system under wmlake://: DuckDB hands over `wmlake://bucket/key` paths."""

        protocol = DUCKDB_PROTOCOL

        @classmethod
        def _strip_protocol(cls, path: Any) -> Any:
            if isinstance(path, list):
                return [cls._strip_protocol(p) for p in path]
            return path.split("://", 1)[1] if "://" in path else path

    return LakeFileSystem(fs)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
