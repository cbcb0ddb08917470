"""Checkpoints that rot or lie, through the real CLI: each one is refused in one line or skipped with a warning.

A tiny run with two checkpoints (steps 2 and 4) is trained once; each test damages a copy
of it as a disk, a bad copy or a stray edit would: bytes flipped inside the tensor data,
the file cut short, the `latest` pointer garbled or replaced by a folder, `checkpoints`
a plain file. `--resume auto` must never train on from bad weights, never traceback and
never delete a user's file; `--resume FILE`, `--init`, `generate`, `analyze` and
`s3 pull` refuse a checkpoint whose bytes differ from the digest saved beside it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.chatdata import save_splits, sft_examples, write_init_run
from tests.conftest import tiny_cli_args
from tfkit.cli.app import app
from tfkit.training.checkpoint import load_checkpoint, save_checkpoint

TOKENS_PER_STEP = 16 * 8  # the tests' TINY config: 16 sequences of 8 tokens a step
NEWEST, OLDER = f"{4 * TOKENS_PER_STEP}.pt", f"{2 * TOKENS_PER_STEP}.pt"


def invoke(*args: str):
    return CliRunner().invoke(app, [*map(str, args)], env={"COLUMNS": "200"})


def one_error_line(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], result.output
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    result = invoke(
        "train",
        "pretrain",
        *tiny_cli_args(out),
        "--max-steps",
        "4",
        "--checkpoint-every",
        "2",
        "--log-every",
        "1",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def run(tmp_path, trained) -> Path:
    """A fresh copy of the trained run, to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def flip_tensor_bytes(path: Path, count: int = 400) -> None:
    """Flip `count` bytes in the middle of the largest tensor stored in a torch checkpoint (a zip archive)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)  # the member's local header
    start = info.header_offset + 30 + name_len + extra_len + (info.file_size - count) // 2
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def resumed_from(run: Path) -> str:
    return json.loads((run / "train_config.json").read_text())["meta"]["resumed"][-1]["from"]


def resume_auto(run: Path):
    return invoke("train", "pretrain", "--resume", "auto", "--out", run, "--quiet")


# ---- the digest: written with each checkpoint, checked by every reader --------------------


def test_every_checkpoint_has_a_sha256sum_line_beside_it(trained):
    for name in (NEWEST, OLDER):
        path = trained / "checkpoints" / name
        line = (trained / "checkpoints" / f"{name}.sha256").read_text()
        assert line == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {name}\n"  # `sha256sum -c` reads it


def test_resume_auto_skips_a_corrupt_checkpoint_for_the_newest_that_verifies(run, trained):
    flip_tensor_bytes(run / "checkpoints" / NEWEST)
    result = resume_auto(run)
    assert result.exit_code == 0, result.output
    [warning] = result.output.strip().splitlines()
    assert warning.startswith("Warning: ") and f"{NEWEST} is corrupt" in warning and f"resuming from {run}" in warning
    assert resumed_from(run).endswith(OLDER)
    # steps 3 and 4 trained again from the good checkpoint: the same weights as the undamaged run
    ref, got = weights(trained / "checkpoints" / NEWEST), weights(run / "checkpoints" / NEWEST)
    assert all(torch.equal(ref[name], got[name]) for name in ref)


def test_the_library_resume_records_what_it_skipped(run):
    """`train(config, resume="auto")`, as `ablate` resumes its runs: the skip goes into the run's record."""
    from tfkit.config import RunConfig
    from tfkit.training.loop import train

    flip_tensor_bytes(run / "checkpoints" / NEWEST)
    saved = json.loads((run / "train_config.json").read_text())
    config = RunConfig.from_dict({k: v for k, v in saved.items() if k != "meta"}, source="test")
    config = config.with_updates({"log.out": str(run)})  # the copy, not the run it was copied from
    result = train(config, resume="auto")
    assert result.status == "completed"
    [record] = json.loads((run / "train_config.json").read_text())["meta"]["resumed"]
    assert record["from"].endswith(OLDER)
    [skipped] = record["skipped"]
    assert f"{NEWEST} is corrupt" in skipped


def test_a_named_corrupt_checkpoint_is_refused_in_one_line(run):
    flip_tensor_bytes(run / "checkpoints" / NEWEST)
    before = (run / "train_log.csv").read_bytes()
    result = invoke("train", "pretrain", "--resume", run / "checkpoints" / NEWEST, "--quiet")
    one_error_line(result, f"{NEWEST} is corrupt", f"{NEWEST}.sha256")
    assert (run / "train_log.csv").read_bytes() == before


def test_resume_auto_refuses_a_run_whose_checkpoints_all_fail(run):
    for name in (NEWEST, OLDER):
        flip_tensor_bytes(run / "checkpoints" / name)
    result = resume_auto(run)
    one_error_line(result, "no checkpoint in", f"{NEWEST} is corrupt", f"{OLDER} is corrupt")
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == sorted([NEWEST, OLDER])  # nothing deleted


@pytest.mark.parametrize("command", ["generate", "analyze"])
def test_generate_and_analyze_refuse_a_corrupt_checkpoint(run, command):
    flip_tensor_bytes(run / "checkpoints" / NEWEST)
    args = {"generate": ["generate", "--run", run, "--prompt", "a"], "analyze": ["analyze", "beliefs", run]}
    one_error_line(invoke(*args[command]), f"{NEWEST} is corrupt")


def test_init_refuses_a_corrupt_checkpoint(tmp_path):
    init = write_init_run(tmp_path / "init", 16, 16)
    data = save_splits(tmp_path / "sft", {"train": sft_examples(32, 16, 0), "validation": sft_examples(8, 16, 1)})
    [checkpoint] = (init / "checkpoints").glob("*.pt")
    flip_tensor_bytes(checkpoint)
    result = invoke(
        "train",
        "sft",
        "--init",
        init,
        "--data",
        data,
        "--out",
        tmp_path / "out",
        "--max-steps",
        "2",
        "--device",
        "cpu",
        "--quiet",
    )
    one_error_line(result, "--init", f"{checkpoint.name} is corrupt")
    assert not (tmp_path / "out" / "train_config.json").exists()


def test_checkpoints_without_a_digest_still_load(run, trained):
    for side in (run / "checkpoints").glob("*.sha256"):
        side.unlink()  # as an older tfkit saved them
    result = resume_auto(run)
    assert result.exit_code == 0 and result.output.strip() == "", result.output
    assert resumed_from(run).endswith(NEWEST)


# ---- truncated files and a garbled pointer: a fallback that says so, or one line ----------


@pytest.mark.parametrize(
    ("size", "digest"),
    [(10_000, False), (50_000, False), (50_000, True)],
    ids=["10000-without-digest", "50000-without-digest", "50000-with-digest"],
)
def test_a_truncated_checkpoint_is_skipped_or_refused(run, size, digest):
    path = run / "checkpoints" / NEWEST
    if not digest:
        for side in (run / "checkpoints").glob("*.sha256"):
            side.unlink()
    with open(path, "r+b") as f:
        f.truncate(size)
    named = invoke("train", "pretrain", "--resume", path, "--quiet")
    one_error_line(named, NEWEST, "is corrupt" if digest else "truncated?")
    result = resume_auto(run)
    assert result.exit_code == 0, result.output
    [warning] = result.output.strip().splitlines()
    assert warning.startswith("Warning: ") and NEWEST in warning and "Traceback" not in result.output
    assert resumed_from(run).endswith(OLDER)


@pytest.mark.parametrize("pointer", [bytes(range(256)) * 4, b"../train_config.json\n"], ids=["random", "path"])
def test_a_garbled_latest_pointer_is_ignored_with_a_warning(run, pointer):
    (run / "checkpoints" / "latest").write_bytes(pointer)
    result = resume_auto(run)
    assert result.exit_code == 0, result.output
    [warning] = result.output.strip().splitlines()
    assert warning.startswith("Warning: ") and "checkpoints/latest does not name a checkpoint" in warning
    assert resumed_from(run).endswith(NEWEST)
    assert (run / "checkpoints" / "latest").read_text() == f"{NEWEST}\n"  # the run's end wrote it again


def test_a_folder_named_latest_is_refused_naming_it(run):
    latest = run / "checkpoints" / "latest"
    latest.unlink()
    latest.mkdir()
    line = one_error_line(resume_auto(run), f"{latest} is a folder")
    assert ".tmp" not in line
    assert latest.is_dir()


def test_a_save_that_cannot_replace_the_pointer_names_the_pointer(tmp_path):
    (tmp_path / "checkpoints" / "latest").mkdir(parents=True)
    with pytest.raises(IsADirectoryError) as caught:
        save_checkpoint(tmp_path / "checkpoints" / "640.pt", {"x": torch.zeros(2)})
    assert caught.value.filename == str(tmp_path / "checkpoints" / "latest")


# ---- a user's file where the checkpoints folder should be ---------------------------------


def test_resume_auto_keeps_a_file_named_checkpoints(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("my notes\n")
    plain = invoke("train", "pretrain", *tiny_cli_args(out), "--max-steps", "2", "--quiet")
    one_error_line(plain, "already holds a run")
    resumed = invoke("train", "pretrain", *tiny_cli_args(out), "--max-steps", "2", "--resume", "auto", "--quiet")
    one_error_line(resumed, "already holds a run", "checkpoints")
    assert (out / "checkpoints").read_text() == "my notes\n"
    assert not (out / "train_config.json").exists()


# ---- s3 pull: a checkpoint that rotted before it was pushed -------------------------------


def test_s3_pull_refuses_a_checkpoint_that_does_not_match_its_digest(run, tmp_path, s3_server, bucket):
    end = ("--endpoint-url", s3_server)
    uri = f"s3://{bucket}/run"
    good = invoke("s3", "push", run, uri, *end, "--quiet")
    assert good.exit_code == 0, good.output
    copy = tmp_path / "copy"
    pulled = invoke("s3", "pull", uri, copy, *end, "--quiet")
    assert pulled.exit_code == 0, pulled.output
    load_checkpoint(copy / "checkpoints" / NEWEST)  # verified against its digest

    flip_tensor_bytes(run / "checkpoints" / OLDER)  # rotted on disk, then pushed: the manifest hashes the bad bytes
    assert invoke("s3", "push", run, uri, *end, "--quiet").exit_code == 0
    fresh = tmp_path / "fresh"
    result = invoke("s3", "pull", uri, fresh, *end, "--quiet")
    one_error_line(result, "corrupt", f"checkpoints/{OLDER}", f"{OLDER}.sha256")
    assert not (fresh / "checkpoints" / OLDER).exists()
    assert (fresh / "checkpoints" / NEWEST).read_bytes() == (run / "checkpoints" / NEWEST).read_bytes()
