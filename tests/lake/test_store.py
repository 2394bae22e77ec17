"""The lake's storage on the real S3-compatible store (SeaweedFS) and on a folder: the same answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from lake.store import LakeError, LakeStore


@pytest.fixture(params=["folder", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> LakeStore:
    if request.param == "folder":
        return LakeStore(tmp_path / "lake")
    return LakeStore(request.getfixturevalue("s3_lake"))


def test_put_read_list_delete(lake: LakeStore) -> None:
    assert lake.files() == [] and lake.read_bytes(lake.path("_manifests", "m.json")) is None
    lake.put_bytes(lake.path("_manifests", "m.json"), b'{"next_offset": 3}')
    lake.put(lake.path("date=2026-11-01", "a.parquet"), lambda stream: stream.write(b"PAR1"))
    lake.put_bytes(lake.path("_manifests", "m.json"), b'{"next_offset": 7}')  # replaced whole
    found = sorted((f.folder, f.name) for f in lake.files())
    assert found == [("_manifests", "m.json"), ("date=2026-11-01", "a.parquet")]
    assert [f.name for f in lake.files("_manifests")] == ["m.json"]
    assert lake.read_bytes(lake.path("_manifests", "m.json")) == b'{"next_offset": 7}'
    lake.delete(lake.path("date=2026-11-01", "a.parquet"))
    lake.delete(lake.path("date=2026-11-01", "gone.parquet"))  # deleting what is not there is fine
    assert [f.name for f in lake.files()] == ["m.json"]
    assert lake.exists()


def test_a_folder_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    lake = LakeStore(tmp_path)
    lake.put_bytes(lake.path("date=2026-11-01", "a.parquet"), b"x")
    assert sorted(p.name for p in (tmp_path / "date=2026-11-01").iterdir()) == ["a.parquet"]


def test_a_missing_bucket_is_no_lake_and_a_bad_location_is_one_line(s3_lake: str) -> None:
    assert not LakeStore("s3://no-such-bucket-here/usage").exists()
    for bad in ("s3:///usage", "gs://bucket/usage"):
        with pytest.raises(LakeError, match="s3://bucket/prefix"):
            LakeStore(bad)
