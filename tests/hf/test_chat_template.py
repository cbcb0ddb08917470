"""An exported chat run's tokenizer renders conversations as `tfkit tokenizer tokenize --mode sft|dpo` does."""

from __future__ import annotations

import json

import pytest

from tests.hf.conftest import invoke, saved_model
from tests.textdata import write_jsonl
from tfkit.tokenizer.train import ASSISTANT, END, EOT, SYSTEM, USER

transformers = pytest.importorskip("transformers")

RECORDS = [
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    {"instruction": "Translate to French:", "input": "the cat sat", "output": "le chat s'est assis"},
    {"instruction": "  Leading spaces\nand a newline", "input": "tabs\there\n\nblank lines", "output": "Ünï ✓ 🐈 "},
    {"instruction": "Count on", "input": "1 2 3", "output": "4 5 6\n"},
]


def user_turn(record: dict) -> str:
    """The user message of an instruction record: instruction, a blank line, input (when there is one)."""
    return f"{record['instruction']}\n\n{record['input']}" if record["input"] else record["instruction"]


def messages(record: dict) -> list[dict]:
    return [{"role": "user", "content": user_turn(record)}, {"role": "assistant", "content": record["output"]}]


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    """(exported folder, tfkit tokenizer, SFT rows, DPO rows): RECORDS tokenized by tfkit, a run exported with it."""
    import datasets

    from tfkit.data.sources import download
    from tfkit.tokenizer.batches import text_tokenizer
    from tfkit.tokenizer.encode import tokenize_dataset
    from tfkit.tokenizer.train import tokenizer_sha256, train_tokenizer

    root = tmp_path_factory.mktemp("chat")
    cache = str(root / "cache")
    for split in ("train", "valid"):
        write_jsonl(root / "sft_src" / f"{split}.jsonl", RECORDS)
        prefs = [{"prompt": user_turn(r), "chosen": r["output"], "rejected": r["instruction"]} for r in RECORDS]
        write_jsonl(root / "dpo_src" / f"{split}.jsonl", prefs)
    download([str(root / "sft_src")], root / "sft_raw", cache_dir=cache)
    download([str(root / "dpo_src")], root / "dpo_raw", cache_dir=cache)
    train_tokenizer(root / "sft_raw", root / "chat.json", vocab_size=300, profile="chat")
    tokenize_dataset(root / "sft_raw", root / "chat.json", root / "sft", mode="sft")
    tokenize_dataset(root / "dpo_raw", root / "chat.json", root / "dpo", mode="dpo")
    record = {"tokenizer_path": str(root / "chat.json"), "tokenizer_sha256": tokenizer_sha256(root / "chat.json")}
    checkpoint = saved_model(root / "run", vocab_size=300, tokenizer=record)
    result = invoke("export", "hf", checkpoint, root / "hf")
    assert result.exit_code == 0, result.output
    sft = datasets.load_from_disk(str(root / "sft"))["train"]
    dpo = datasets.load_from_disk(str(root / "dpo"))["train"]
    return root / "hf", text_tokenizer(str(root / "chat.json")), sft, dpo


def test_a_record_renders_to_tfkits_sft_ids_and_loss_mask(chat):
    out, _, sft, _ = chat
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    for record, row in zip(RECORDS, sft, strict=True):
        rendered = tokenizer.apply_chat_template(messages(record), tokenize=True, return_assistant_tokens_mask=True)
        assert rendered["input_ids"] == row["input_ids"], record
        assert [bool(m) for m in rendered["assistant_masks"]] == row["loss_mask"]  # the response and its <|end|>
        text = tokenizer.apply_chat_template(messages(record), tokenize=False)
        assert text == f"{USER}{user_turn(record)}{END}{ASSISTANT}{record['output']}{END}{EOT}"


def test_the_generation_prompt_is_tfkits_prompt(chat):
    out, _, sft, dpo = chat
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for record, row, pair in zip(RECORDS, sft, dpo, strict=True):
        prompt = tokenizer.apply_chat_template(messages(record)[:1], add_generation_prompt=True)["input_ids"]
        assert prompt == pair["prompt_input_ids"] == row["input_ids"][: row["loss_mask"].index(True)]
        assert tokenizer.apply_chat_template(messages(record)[:1])["input_ids"] == prompt[:-1]  # no <|assistant|>


def test_system_messages_and_more_turns_continue_the_pattern(chat):
    out, ours, _, _ = chat
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": [{"type": "text", "text": "Count on"}]},  # content as parts
        {"role": "assistant", "content": "4 5 6"},
    ]
    special = {t: ours.token_to_id(t) for t in (SYSTEM, USER, ASSISTANT, END, EOT)}
    expected = []
    for message in conversation:
        content = message["content"] if isinstance(message["content"], str) else message["content"][0]["text"]
        tag = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}[message["role"]]
        expected += [special[tag], *ours.encode(content, add_special_tokens=False).ids, special[END]]
    assert tokenizer.apply_chat_template(conversation)["input_ids"] == [*expected, special[EOT]]
    assert tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True)["input_ids"] == [
        *expected[: -len(ours.encode("4 5 6").ids) - 2],
        special[ASSISTANT],
    ]
    with pytest.raises(Exception, match="role tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}])


def test_chat_replies_stop_at_end_and_process_runs_have_no_template(chat, tmp_path):
    out, ours, _, _ = chat
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [ours.token_to_id(EOT), ours.token_to_id(END)]
    assert transformers.GenerationConfig.from_pretrained(out).eos_token_id == generation["eos_token_id"]
    assert invoke("export", "hf", saved_model(tmp_path / "run"), tmp_path / "hf").exit_code == 0
    assert "chat_template" not in json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf").chat_template is None
