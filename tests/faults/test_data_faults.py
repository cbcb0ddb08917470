"""Damaged data and bad sampling input through the real CLI: one red line and exit 2, or a warning.

Token folders are made by the tests (download → tokenizer train → tokenize), copied and
then damaged: a sidecar whose vocabulary size is text, garbage document offsets or
manifest, a token id outside the vocabulary. `generate` gets NaN temperatures, prompts
that are not UTF-8 and prompts longer than the model's context; `tokenizer tokenize` is
killed mid-way and run again; `tokenizer train` is asked for more ids than the corpus has.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.chatdata import one_torch_thread, write_init_run  # noqa: F401  (autouse fixture)
from tests.textdata import write_stories
from tfkit.cli.app import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
CONTEXT = 16  # max_seq_len of the generate test model


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})


def assert_one_line(result, *needles: str) -> str:
    """Exit 2, no traceback, exactly one line on stderr holding every needle; returns that line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A story dataset, a chat-profile tokenizer, its pretraining shards and an untrained run to sample from."""
    from tfkit.data.sources import download
    from tfkit.tokenizer.encode import tokenize_dataset
    from tfkit.tokenizer.train import load_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("faults")
    write_stories(root / "stories.txt", 6000, seed=3)
    download(
        [str(root / "stories.txt")],
        root / "raw",
        val_fraction=0.1,
        seed=0,
        sample_by="line",
        cache_dir=str(root / "cache"),
    )
    train_tokenizer(root / "raw", root / "chat.json", vocab_size=320, profile="chat")
    tokenize_dataset(root / "raw", root / "chat.json", root / "shards")
    vocab_size = load_tokenizer(root / "chat.json").get_vocab_size(with_added_tokens=True)
    write_init_run(root / "run", vocab_size=vocab_size, max_seq_len=CONTEXT)
    return {
        "root": root,
        "raw": root / "raw",
        "tokenizer": root / "chat.json",
        "shards": root / "shards",
        "run": root / "run",
    }


def damaged_copy(data, tmp_path: Path, damage) -> Path:
    shards = tmp_path / "shards"
    shutil.copytree(data["shards"], shards)
    damage(shards)
    return shards


def _sidecar_vocab_text(shards: Path) -> None:
    meta = json.loads((shards / "train.json").read_text())
    meta["vocab_size"] = "many"
    (shards / "train.json").write_text(json.dumps(meta))


def _garbage_offsets(shards: Path) -> None:
    (shards / "train.docs.npy").write_bytes(b"not an array at all\n" * 4)


def _backward_offsets(shards: Path) -> None:
    offsets = np.load(shards / "train.docs.npy")
    offsets[5] = offsets[3]  # first and last entries still agree with the shard
    np.save(shards / "train.docs.npy", offsets)


def _garbage_manifest(shards: Path) -> None:
    (shards / "tfkit_tokenized.json").write_bytes(b'{"mode": "pretrain", \xff')


def _list_manifest(shards: Path) -> None:
    (shards / "tfkit_tokenized.json").write_text("[1, 2, 3]")


DAMAGE = {
    "sidecar vocab_size is text": (_sidecar_vocab_text, ("train.json", "'vocab_size'", "'many'")),
    "garbage document offsets": (_garbage_offsets, ("train.docs.npy", "not a .npy file")),
    "document offsets going backwards": (_backward_offsets, ("train.docs.npy", "do not increase")),
    "garbage manifest": (_garbage_manifest, ("tfkit_tokenized.json", "not valid JSON")),
    "manifest is a list": (_list_manifest, ("tfkit_tokenized.json", "JSON list")),
}


def _command(name: str, shards: Path, data, tmp_path: Path) -> list:
    if name == "count":
        return ["tokenizer", "count", "--tokenized-dir", shards]
    if name == "inspect":
        return [
            "tokenizer",
            "inspect",
            "--tokenized-dir",
            shards,
            "--raw-dataset-dir",
            data["raw"],
            "--tokenizer-path",
            data["tokenizer"],
            "--no-interactive",
        ]
    return [
        "train",
        "pretrain",
        "--data",
        shards,
        "--depth",
        "1",
        "--width",
        "32",
        "--num-heads",
        "2",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--max-steps",
        "30",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        tmp_path / "out",
    ]


@pytest.mark.parametrize(
    "damage, command",
    [(d, c) for d in DAMAGE for c in ("count", "inspect")] + [("sidecar vocab_size is text", "train")],
)
def test_damaged_token_folder_is_one_line(data, tmp_path, damage, command):
    """count, inspect and train pretrain name the damaged file and what is wrong with it."""
    corrupt, needles = DAMAGE[damage]
    shards = damaged_copy(data, tmp_path, corrupt)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_one_line(invoke(*_command(command, shards, data, tmp_path)), *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written (no --out folder)


def test_token_id_outside_the_vocabulary_is_refused_before_training(data, tmp_path):
    """An id past the vocabulary (an IndexError in the embedding, steps into training) is refused at open."""
    vocab_size = json.loads((data["shards"] / "train.json").read_text())["vocab_size"]
    bad_id = vocab_size + 1000
    where = {}

    def plant(shards: Path) -> None:
        tokens = np.memmap(shards / "train.bin", dtype="<u2", mode="r+", offset=64)
        where["position"] = len(tokens) * 3 // 4  # deep in the shard: reached only after many steps
        tokens[where["position"]] = bad_id
        tokens.flush()
        del tokens

    shards = damaged_copy(data, tmp_path, plant)
    line = assert_one_line(invoke(*_command("train", shards, data, tmp_path)), "train.bin", f"token id {bad_id}")
    assert f"{where['position']:,}" in line and f"{vocab_size:,}" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value", [("--temperature", "nan"), ("--temperature", "inf")])
def test_generate_refuses_a_temperature_that_is_not_a_finite_number(data, option, value):
    result = invoke(
        "generate",
        "--run",
        data["run"],
        "--tokenizer-path",
        data["tokenizer"],
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
        "--device",
        "cpu",
        option,
        value,
    )
    assert_one_line(result, "--temperature must be a finite number")
    assert result.stdout == ""


def test_generate_refuses_a_prompt_that_is_not_utf8(data):
    """Bytes that are not UTF-8 on the command line: one line, not a TypeError from the tokenizer."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfkit",
            "generate",
            "--run",
            str(data["run"]),
            "--tokenizer-path",
            str(data["tokenizer"]),
            "--prompt",
            b"ok \xff\xfe",
            "--max-new-tokens",
            "2",
            "--device",
            "cpu",
        ],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr.decode(errors="replace")
    assert done.stdout == b""
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr.decode()
    assert "--prompt is not valid UTF-8 (byte 0xff at character 4)" in lines[0]


def test_generate_warns_when_the_prompt_is_cut(data):
    """A prompt longer than the context loses its first tokens, chat header included: say how many."""
    from tfkit.models.generate import prompt_ids
    from tfkit.tokenizer.train import load_tokenizer

    prompt = "once upon a time there was a little girl named lily she loved to play in the park with her dog"
    ids, _ = prompt_ids(load_tokenizer(data["tokenizer"]), prompt)
    assert len(ids) > CONTEXT
    args = (
        "generate",
        "--run",
        data["run"],
        "--tokenizer-path",
        data["tokenizer"],
        "--max-new-tokens",
        "2",
        "--device",
        "cpu",
    )
    long = invoke(*args, "--prompt", prompt)
    assert long.exit_code == 0, long.output
    warning = [line for line in long.stderr.splitlines() if "Warning" in line]
    assert len(warning) == 1, long.stderr
    assert f"the prompt is {len(ids)} tokens" in warning[0] and f"context of {CONTEXT}" in warning[0]
    assert f"first {len(ids) - CONTEXT} tokens are cut" in warning[0] and "<|user|>" in warning[0]
    short = invoke(*args, "--prompt", "once upon a time")
    assert short.exit_code == 0 and "Warning" not in short.stderr


def test_tokenizer_train_says_the_vocabulary_fell_short(data, tmp_path):
    from tfkit.tokenizer.train import load_tokenizer

    out = tmp_path / "big.json"
    result = invoke(
        "tokenizer", "train", "--dataset-dir", data["raw"], "--vocab-size", "10000000", "--output-path", out, "--quiet"
    )
    assert result.exit_code == 0, result.output
    reached = load_tokenizer(out).get_vocab_size(with_added_tokens=True)
    assert reached < 2000
    assert f"the vocabulary reached only {reached:,} of the 10,000,000 ids" in result.stderr
    refused = invoke(
        "tokenizer",
        "train",
        "--dataset-dir",
        data["raw"],
        "--vocab-size",
        str(10**11),
        "--output-path",
        tmp_path / "huge.json",
    )
    assert_one_line(refused, "--vocab-size must be at most")  # the trainer would abort reserving 4.5 TB
    assert not (tmp_path / "huge.json").exists()


def _leftovers(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.name.startswith(".out.") and p.name.endswith(".tmp"))


def test_a_killed_tokenize_leaves_nothing_behind_after_the_next_run(data, tmp_path):
    """kill -9 mid-way leaves a hidden temp folder; the next tokenize removes it, and keeps a live writer's."""
    import socket

    out = tmp_path / "out"
    args = [
        "tokenizer",
        "tokenize",
        "--dataset-dir",
        str(data["raw"]),
        "--tokenizer-path",
        str(data["tokenizer"]),
        "--output-dir",
        str(out),
        "--overwrite",
        "--batch-size",
        "10",
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    proc = subprocess.Popen([sys.executable, "-m", "tfkit", *args], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any((p / ".tfkit-writer").is_file() for p in _leftovers(tmp_path)):  # writing has begun
            break
        time.sleep(0.005)
    assert proc.poll() is None, "tokenize ended before it could be killed mid-way"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = _leftovers(tmp_path)
    assert len(killed) == 1 and not out.exists()
    # an older leftover of a dead writer, and the folder of a writer still running (this process)
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    dead = tmp_path / ".out.deadpid1.tmp"
    live = tmp_path / ".out.livepid1.tmp"
    for folder, pid in ((dead, gone.pid), (live, os.getpid())):
        folder.mkdir()
        (folder / ".tfkit-writer").write_text(f"{pid} {socket.gethostname()}\n")
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert _leftovers(tmp_path) == [live]
    assert "removed 2 folder(s) left by an interrupted tokenize" in again.stderr
    assert killed[0].name in again.stderr and dead.name in again.stderr
    assert (out / "train.bin").is_file() and not (out / ".tfkit-writer").exists()
