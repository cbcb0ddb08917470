"""Check that two revisions of tfkit give the same numbers, to the last digit, for the same commands.

    python scripts/same_numbers.py REV_A [REV_B]        # REV_B: the working tree when left out

For a change that should not change behaviour (a refactor). Each revision is checked out
(`git archive`) into a temporary folder and runs, through its own CLI on the CPU, the same
commands on the same inputs: data download and a chat tokenizer, token shards for
pretraining, SFT and DPO, `train pretrain` on a built-in process and on the shards, `train
sft` and `train dpo` from `--init`, `train icl`, an ablation of 2 settings x 2 seeds, and a
run resumed from its first checkpoint. Then every CSV of every run (train and validation
logs, the ablation's results) is compared cell by cell, timing columns apart, and every
token file byte by byte. Prints one line per file and exits 1 when any differs.
"""

from __future__ import annotations

import csv
import filecmp
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

# columns that measure time or the machine, not what was trained
# ids that hash the whole config: a field added between the revisions changes them
IDS = ("setting_id", "run_id")
TIMING = (
    "data_wait_frac",
    "peak_memory_mb",
    "time_s",
    "tokens_per_s",
    "points_per_s",
    "mfu",
    "eval_time_s",
    "run_dir",
    "step_time_ms",
)
WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "big", "small", "red", "blue", "park", "tree", "ball"]


def write_inputs(root: Path) -> None:
    """A small story file, an instruction set and preference pairs: the same bytes for both revisions."""
    rng = random.Random(0)
    stories = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "." for _ in range(300)]
    (root / "stories.txt").write_text("\n".join(stories) + "\n")
    (root / "taught").mkdir()
    taught = [{"instruction": f"Say {w}.", "input": "", "output": f"{w} {w}."} for w in WORDS[:8]]
    for split in ("train", "valid"):
        (root / "taught" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in taught))
    pairs = [{"prompt": f"Is it {w}?", "chosen": f"yes it is {w}.", "rejected": f"no it is {w}."} for w in WORDS]
    (root / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs * 3))


def commands(out: Path, inputs: Path) -> list[list[str]]:
    tiny = "--device cpu --quiet"
    mess3 = "--data mess3 --depth 1 --width 32 --num-heads 2 --seq-len 10"
    lines = [
        f"data download {inputs}/stories.txt --output-dir {out}/raw --sample-by line",
        f"data download {inputs}/taught --output-dir {out}/sft_raw",
        f"data download {inputs}/prefs.jsonl --output-dir {out}/dpo_raw --val-fraction 0.2",
        f"tokenizer train --dataset-dir {out}/raw --vocab-size 300 --profile chat --output-path {out}/chat.json",
        *[
            f"tokenizer tokenize --dataset-dir {out}/{raw} --tokenizer-path {out}/chat.json "
            f"--output-dir {out}/{tok} --mode {mode}"
            for raw, tok, mode in (("raw", "shards", "pretrain"), ("sft_raw", "sft", "sft"), ("dpo_raw", "dpo", "dpo"))
        ],
        f"train pretrain {mess3} --max-steps 60 --eval-every 20 --out {out}/mess3 {tiny}",
        f"train pretrain --data {out}/shards --depth 2 --width 32 --num-heads 2 --seq-len 24 --batch-size 4 "
        f"--set data.val_examples=8 --max-steps 20 --eval-every 10 --out {out}/pre {tiny}",
        f"train sft --init {out}/pre --data {out}/sft --batch-size 4 --max-steps 10 --eval-every 5 "
        f"--out {out}/sft_run {tiny}",
        f"train dpo --init {out}/sft_run --data {out}/dpo --batch-size 4 --max-steps 10 --eval-every 5 "
        f"--out {out}/dpo_run {tiny}",
        f"train icl --n-dims 3 --n-points 6 --width 32 --num-heads 2 --max-steps 30 --eval-every 10 "
        f"--out {out}/icl {tiny}",
        f"ablate {mess3} --lr 0.001 0.01 --num-runs 2 --max-steps 30 --eval-every 10 -c "
        f"--logfile {out}/ablate.csv --runs-dir {out}/ablate {tiny}",
        f"train pretrain {mess3} --max-steps 40 --checkpoint-every 20 --eval-every 10 --out {out}/whole {tiny}",
    ]
    return [shlex.split(line) for line in lines]


def run(source: Path, out: Path, inputs: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(source), "WANDB_MODE": "offline", "COLUMNS": "200"}
    for args in commands(out, inputs):
        done = subprocess.run(
            [sys.executable, "-m", "tfkit", *args], env=env, cwd=out.parent, capture_output=True, text=True
        )
        if done.returncode != 0:
            sys.exit(f"{source}: tfkit {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    # a run resumed from its first checkpoint, into a run directory of its own
    first = min((out / "whole" / "checkpoints").glob("*.pt"), key=lambda p: int(p.stem))
    resume = shlex.split(
        "train pretrain --data mess3 --depth 1 --width 32 --num-heads 2 --seq-len 10 --max-steps 40 "
        f"--checkpoint-every 20 --eval-every 10 --out {out}/resumed --resume {first} --device cpu --quiet"
    )
    done = subprocess.run(
        [sys.executable, "-m", "tfkit", *resume], env=env, cwd=out.parent, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"{source}: the resume failed:\n{done.stdout}{done.stderr}")


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def same_rows(left: list[dict[str, str]], right: list[dict[str, str]]) -> tuple[bool, set[str]]:
    """Whether the cells of the columns both sides have are equal; the columns only one side has.

    A config field added between the revisions is a new column (and so a new setting and run
    id): what is compared is every number both revisions log.
    """
    if len(left) != len(right):
        return False, set()
    columns = set(left[0]) & set(right[0]) - set(IDS) if left else set()
    only = (set(left[0]) ^ set(right[0])) if left else set()
    differing = {c for a, b in zip(left, right, strict=True) for c in columns if a[c] != b[c]}
    return not differing, only | {f"{c} (differs)" for c in differing}


def compare(a: Path, b: Path) -> int:
    differ = 0
    for left in sorted(a.rglob("*")):
        name = left.relative_to(a)
        if name.parts[0] == "ablate":  # run directories named by their ids: ablate.csv holds their rows
            continue
        right = b / name
        if left.suffix == ".csv" and left.is_file():
            ours, theirs = rows(left), rows(right) if right.is_file() else []
            same, only = same_rows(ours, theirs)
            extra = f"; columns of one side only or differing: {', '.join(sorted(only))}" if only else ""
            print(f"{'same' if same else 'DIFFERENT':9} {name} ({len(ours)} rows{extra})")
            differ += not same
        elif left.suffix == ".bin" and left.is_file():
            same = right.is_file() and filecmp.cmp(left, right, shallow=False)
            print(f"{'same' if same else 'DIFFERENT':9} {name} ({left.stat().st_size} bytes)")
            differ += not same
    return differ


def checkout(repo: Path, rev: str, into: Path) -> Path:
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    if not 2 <= len(sys.argv) <= 3:
        sys.exit(__doc__)
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="same-numbers-") as tmp:
        root = Path(tmp)
        (root / "inputs").mkdir()
        write_inputs(root / "inputs")
        sides = []
        for i, rev in enumerate(sys.argv[1:3] if len(sys.argv) == 3 else [sys.argv[1], None]):
            source = repo if rev is None else checkout(repo, rev, root / f"src{i}")
            run(source, root / f"out{i}", root / "inputs")
            sides.append(root / f"out{i}")
        differ = compare(*sides)
        print(f"{differ} files differ" if differ else "every number is the same")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
