"""The local side of S3 sync: key safety, globs, scanning, manifests, .env and URIs."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from tfkit.errors import StorageError
from tfkit.storage.manifest import (
    MANIFEST_NAME,
    BoundedReader,
    FileEntry,
    local_path,
    manifest_bytes,
    parse_manifest,
    scan_directory,
    selected,
    sha256_of,
    unsafe_reason,
)
from tfkit.storage.s3 import S3Uri, load_dotenv, parse_s3_uri


@pytest.mark.parametrize(
    "rel",
    ["../evil.txt", "a/../../evil", "..", "/etc/passwd", "\\windows\\x", "C:evil", "a\\..\\..\\x", "x\x00y", ".", ""],
)
def test_unsafe_keys_are_refused(tmp_path, rel):
    assert unsafe_reason(rel) is not None
    with pytest.raises(StorageError, match="refusing"):
        local_path(tmp_path, rel)


@pytest.mark.parametrize("rel", ["a..b.txt", "..hidden", "x/..y/z..", "checkpoints/1024.pt", "a/./b.txt"])
def test_names_with_dots_are_fine(tmp_path, rel):
    assert unsafe_reason(rel) is None
    assert local_path(tmp_path, rel).resolve().is_relative_to(tmp_path.resolve())


def test_a_symlink_out_of_the_destination_is_refused(tmp_path):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    os.symlink(outside, dest / "link")
    with pytest.raises(StorageError, match="s3://b/run/link/x.txt"):
        local_path(dest, "link/x.txt", "s3://b/run/link/x.txt")


def test_globs_match_paths_and_names():
    assert selected("logs/train_log.csv", ["*.csv"], [])
    assert selected("train_config.json", ["*.csv", "train_config.json"], [])
    assert not selected("checkpoints/10.pt", ["*.csv"], [])
    assert selected("checkpoints/10.pt", ["checkpoints/*"], [])
    assert not selected("checkpoints/10.pt", [], ["checkpoints/*"])
    assert not selected("a.csv", ["*.csv"], ["a.csv"])  # exclude wins


def test_scan_leaves_out_manifest_env_and_temp_files(tmp_path):
    env_files = [".env", "sub/.env.local", "sub/prod.env"]
    for rel in ["a.txt", "sub/b.txt", MANIFEST_NAME, *env_files, "sub/.x.pt.k3j2.tmp", ".d.k2.tmp/y"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert scan_directory(tmp_path) == ["a.txt", "sub/b.txt"]
    assert scan_directory(tmp_path, include=["b.txt"]) == ["sub/b.txt"]


def test_manifest_round_trip_and_bad_manifests():
    files = {"b.txt": FileEntry(3, "0" * 64), "a/c.pt": FileEntry(0, "f" * 64)}
    assert parse_manifest(manifest_bytes(files), "m") == files
    no_digest = b'{"format": "tfkit-manifest", "version": 1, "files": {"x": {"size": 1}}}'
    for bad in [b"{", b"[]", b'{"format": "other"}', no_digest]:
        with pytest.raises(StorageError, match="s3://b/m is not a valid tfkit manifest"):
            parse_manifest(bad, "s3://b/m")


def test_bounded_reader_stops_at_the_size_it_was_given():
    f = io.BytesIO(b"0123456789")
    reader = BoundedReader(f, 6)
    f.seek(0, io.SEEK_END)
    f.write(b"appended")  # the file grows after the reader was made
    assert reader.seek(0, io.SEEK_END) == 6
    reader.seek(2)
    assert reader.read() == b"2345"
    reader.seek(0)
    assert sha256_of(reader) == hashlib.sha256(b"012345").hexdigest()
    assert sha256_of(io.BytesIO(b"0123456789"), 6) == hashlib.sha256(b"012345").hexdigest()


def test_dotenv_fills_only_unset_aws_variables(tmp_path, monkeypatch, capfd):
    env = tmp_path / ".env"
    env.write_bytes(
        b"# credentials\n"
        b"AWS_ACCESS_KEY_ID=from-dotenv\n"
        b"export AWS_SECRET_ACCESS_KEY='quoted secret'\n"
        b'AWS_ENDPOINT_URL="http://localhost:9000"  \n'
        b"AWS_DEFAULT_REGION=eu-west-1 # comment\n"
        b"AWS_SESSION_TOKEN=tok${HOME}en\n"  # taken as written, never expanded
        b"WANDB_API_KEY=not-loaded\n"
        b"AWS_NO_VALUE\n"
        b"not a line \xff\n"
    )
    for name in (
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "AWS_DEFAULT_REGION",
        "AWS_SESSION_TOKEN",
        "AWS_NO_VALUE",
        "WANDB_API_KEY",
    ):
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)  # restored (to unset) after the test
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "already-set")
    loaded = load_dotenv(env)
    assert sorted(loaded) == ["AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
    assert os.environ["AWS_ACCESS_KEY_ID"] == "already-set"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "quoted secret"
    assert os.environ["AWS_ENDPOINT_URL"] == "http://localhost:9000"
    assert os.environ["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert os.environ["AWS_SESSION_TOKEN"] == "tok${HOME}en"
    assert "WANDB_API_KEY" not in os.environ and "AWS_NO_VALUE" not in os.environ
    assert load_dotenv(tmp_path / "missing.env") == []
    assert capfd.readouterr() == ("", "")  # a line that does not parse is skipped quietly


def test_s3_uris():
    assert parse_s3_uri("s3://bucket") == S3Uri("bucket", "")
    assert parse_s3_uri("s3://bucket/a/b") == S3Uri("bucket", "a/b/")
    assert parse_s3_uri("s3://bucket/a//b/") == S3Uri("bucket", "a/b/")
    assert str(parse_s3_uri("s3://bucket/a").child("run")) == "s3://bucket/a/run/"
    for bad in ["bucket/a", "s3://", "s3:///a", "http://bucket/a"]:
        with pytest.raises(StorageError, match="--s3-uri"):
            parse_s3_uri(bad, "--s3-uri")
