"""`tfkit tokenizer inspect` on SFT and DPO data made through the real CLI: the loss mask is visible."""

from __future__ import annotations

import json
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.textdata import write_jsonl
from tfkit.cli.app import app

runner = CliRunner()
INSTRUCTIONS = [
    {"instruction": f"Say the number {i}.", "input": "Please." if i % 2 else "", "output": f"The number is {i}!"}
    for i in range(12)
]
PAIRS = [
    {
        "prompt": f"Is {i} even?",
        "chosen": f"Yes, {i} is even." if i % 2 == 0 else f"No, {i} is odd.",
        "rejected": f"No, {i} is odd." if i % 2 == 0 else f"Yes, {i} is even.",
    }
    for i in range(12)
]
SCORED = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    """SFT and DPO folders made as a user makes them: download, tokenizer train --profile chat, tokenize --mode."""
    root = tmp_path_factory.mktemp("chat")
    for name, records in (("sft", INSTRUCTIONS), ("dpo", PAIRS)):
        write_jsonl(root / name / "train.jsonl", records)  # train and valid files: the train split keeps its order
        write_jsonl(root / name / "valid.jsonl", records[:2])
        done = invoke(
            "data",
            "download",
            root / name,
            "--output-dir",
            root / f"{name}_raw",
            "--cache-dir",
            root / "cache",
            "--quiet",
        )
        assert done.exit_code == 0, done.output
    trained = invoke(
        "tokenizer",
        "train",
        "--dataset-dir",
        root / "sft_raw",
        "--profile",
        "chat",
        "--vocab-size",
        "300",
        "--output-path",
        root / "chat.json",
        "--quiet",
    )
    assert trained.exit_code == 0, trained.output
    for mode in ("sft", "dpo"):
        done = invoke(
            "tokenizer",
            "tokenize",
            "--dataset-dir",
            root / f"{mode}_raw",
            "--tokenizer-path",
            root / "chat.json",
            "--output-dir",
            root / mode / "tok",
            "--mode",
            mode,
            "--quiet",
        )
        assert done.exit_code == 0, done.output
    return root


def test_sft_example_marks_the_response_as_scored(chat):
    shown = invoke("tokenizer", "inspect", "--tokenized-dir", chat / "sft" / "tok", "--index", "3", "--max-tokens", "4")
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == "train example 3 of 12: 19 tokens, 6 scored"
    assert "scored tokens (the ones in the loss) are between [[ and ]]" in shown.output
    rendering = shown.output.split("rendering:\n", 1)[1].split("\nexample tokens", 1)[0]
    # the prompt is not scored, the response and the <|end|> that closes it are; <|endoftext|> is not
    expected = "<|user|>Say the number 3.\n\nPlease.<|end|><|assistant|>[[The number is 3!<|end|>]]<|endoftext|>"
    assert rendering == expected
    assert SCORED.findall(rendering) == ["The number is 3!<|end|>"]
    assert "4 │ 2 more" not in shown.output and "15 more" in shown.output  # the token table, 4 rows


def test_dpo_pair_labels_chosen_and_rejected(chat):
    shown = invoke(
        "tokenizer",
        "inspect",
        "--tokenized-dir",
        chat / "dpo" / "tok",
        "--split",
        "validation",
        "--index",
        "1",
        "--no-interactive",
    )
    assert shown.exit_code == 0, shown.output
    header = r"validation pair 1 of 2: prompt \d+ tokens; chosen \d+ tokens \(\d+ scored\), rejected \d+ tokens"
    assert re.match(header, shown.output)
    chosen = shown.output.split("\nchosen:\n", 1)[1].split("\n", 1)[0]
    rejected = shown.output.split("\nrejected:\n", 1)[1].split("\n", 1)[0]
    assert chosen == "<|user|>Is 1 even?<|end|><|assistant|>[[No, 1 is odd.<|end|>]]"
    assert rejected == "<|user|>Is 1 even?<|end|><|assistant|>[[Yes, 1 is even.<|end|>]]"
    assert "chosen tokens" in shown.output and "rejected tokens" in shown.output


def test_json_gives_ids_mask_and_segments(chat):
    sft = json.loads(
        invoke("tokenizer", "inspect", "--tokenized-dir", chat / "sft" / "tok", "--index", "4", "--json").stdout
    )
    (example,) = sft["sequences"]
    assert sft["mode"] == "sft" and sft["num_examples"] == 12
    assert [s["text"] for s in example["segments"] if s["scored"]] == ["The number is 4!<|end|>"]
    assert (
        sum(example["loss_mask"])
        == example["scored_tokens"]
        == sum(s["tokens"] for s in example["segments"] if s["scored"])
    )
    assert len(example["ids"]) == len(example["loss_mask"]) == len(example["pieces"])
    dpo = json.loads(
        invoke("tokenizer", "inspect", "--tokenized-dir", chat / "dpo" / "tok", "--index", "2", "--json").stdout
    )
    chosen, rejected = dpo["sequences"]
    assert (chosen["name"], rejected["name"]) == ("chosen", "rejected")
    assert chosen["marked"].endswith("[[Yes, 2 is even.<|end|>]]")
    assert rejected["marked"].endswith("[[No, 2 is odd.<|end|>]]")
    assert chosen["ids"][: dpo["prompt_tokens"]] == rejected["ids"][: dpo["prompt_tokens"]]
    assert not any(chosen["loss_mask"][: dpo["prompt_tokens"]])


def test_on_a_terminal_prompt_and_response_have_different_styles(chat, monkeypatch):
    terminal = Console(force_terminal=True, color_system="standard", soft_wrap=True, width=300)
    monkeypatch.setattr("tfkit.cli.tokenizer.console", terminal)
    args = ("tokenizer", "inspect", "--tokenized-dir", chat / "sft" / "tok", "--index", "0", "--no-interactive")
    shown = invoke(*args)
    assert shown.exit_code == 0, shown.output
    assert "\x1b[1;32mThe number is 0!<|end|>\x1b[0m" in shown.output  # the scored response: bold green
    assert "\x1b[2m<|user|>Say the number 0.<|end|><|assistant|>\x1b[0m" in shown.output  # the prompt: dim
    assert "[[" not in shown.output
    marked = invoke(*args, "--markers")
    assert "\x1b[1;32m[[The number is 0!<|end|>]]\x1b[0m" in marked.output
    pair = invoke("tokenizer", "inspect", "--tokenized-dir", chat / "dpo" / "tok", "--index", "0", "--no-interactive")
    assert "chosen (" in pair.output and "rejected (" in pair.output  # side by side, one column each
    assert "\x1b[1;32mYes, 0 is even.<|end|>\x1b[0m" in pair.output and "\x1b[1;32mNo, 0 is odd.<|end|>" in pair.output


def test_pages_through_examples(chat):
    paged = invoke(
        "tokenizer", "inspect", "--tokenized-dir", chat / "sft" / "tok", "--interactive", input="n\nj 7\np\nq\n"
    )
    assert paged.exit_code == 0, paged.output
    headers = [line for line in paged.output.splitlines() if "example" in line and " of 12" in line]
    assert [h.split(":")[0].rsplit(">", 1)[-1].strip() for h in headers] == [
        f"train example {i} of 12" for i in (0, 1, 7, 6)
    ]
    assert "[[The number is 7!<|end|>]]" in paged.output


@pytest.mark.parametrize(
    "args, message",
    [
        (("--index", "12"), "--index must be in [0, 11], got 12"),
        (("--split", "test"), "has no 'test' split (it has train, validation)"),
        (("--tokenizer-path", "{other}"), "is not the tokenizer this data were made with"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(chat, tmp_path, args, message):
    (tmp_path / "other.json").write_bytes((chat / "chat.json").read_bytes().replace(b'"<|end|>"', b'"<|stop|>"'))
    args = [a.format(other=tmp_path / "other.json") for a in args]
    result = invoke("tokenizer", "inspect", "--tokenized-dir", chat / "sft" / "tok", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
