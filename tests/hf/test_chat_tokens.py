"""`tfkit import hf --chat-tokens`: a GPT-2 whose tokenizer has only <|endoftext|> becomes a run SFT and DPO start from.

The GPT-2 is tiny and random, with a byte-level BPE tokenizer built as OpenAI's is; the chat
data goes through the real CLI: `tokenizer tokenize --mode sft|dpo`, `train sft --init`,
`train dpo --init`, `export hf`, and `import hf --chat-tokens` again."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from tests.chatdata import one_torch_thread  # noqa: F401  (autouse fixture)
from tests.hf.conftest import gpt2_tokenizer, invoke, transformers_model
from tests.textdata import instruction_records, write_jsonl, write_stories, yes_no_pairs
from tfkit.tokenizer.train import ASSISTANT, END, EOT, USER
from tfkit.training.load import load_run

transformers = pytest.importorskip("transformers")

SFT = "--batch-size 8 --max-steps 40 --lr 3e-3 --warmup-steps 0 --log-every 5 --eval-every 10 --device cpu -q"
DPO = (
    "--beta 0.1 --batch-size 8 --lr 1e-3 --warmup-steps 0 --max-steps 30 --log-every 1 --eval-every 30 --device cpu -q"
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(root, a GPT-2-style tokenizer.json with <|endoftext|> last, its ids): SFT and DPO records saved as datasets."""
    from tfkit.data.sources import download

    root = tmp_path_factory.mktemp("chat_tokens")
    cache = str(root / "cache")
    lines = write_stories(root / "stories.txt", 300, seed=0)
    tokenizer = gpt2_tokenizer(root / "gpt2_tokenizer.json", lines)
    write_jsonl(root / "sft_src" / "train.jsonl", instruction_records(64, seed=0))
    write_jsonl(root / "sft_src" / "valid.jsonl", instruction_records(16, seed=1))
    download([str(root / "sft_src")], root / "sft_raw", cache_dir=cache)
    write_jsonl(root / "dpo_src" / "train.jsonl", yes_no_pairs(64, seed=0))
    write_jsonl(root / "dpo_src" / "valid.jsonl", yes_no_pairs(32, seed=1))
    download([str(root / "dpo_src")], root / "dpo_raw", cache_dir=cache)
    return root, tokenizer, json.loads(tokenizer.read_text())["added_tokens"][0]["id"] + 1


def gpt2(corpus, folder, **config):
    """A tiny random GPT-2 saved in `folder` with the corpus tokenizer (vocab_size its ids unless set)."""
    _, tokenizer, ids = corpus
    return transformers_model(folder, "gpt2", words=ids - 1, tokenizer=tokenizer, **config)


@pytest.fixture(scope="module", params=["tied", "untied"])
def imported(request, corpus, tmp_path_factory):
    """(the transformers model, its folder, the run imported from it with --chat-tokens, the --json output)."""
    root = tmp_path_factory.mktemp(request.param)
    theirs = gpt2(corpus, root / "hf", tie_word_embeddings=request.param == "tied")
    result = invoke("import", "hf", root / "hf", "--out", root / "run", "--chat-tokens", "--json")
    assert result.exit_code == 0, result.output
    return theirs, root / "hf", root / "run", json.loads(result.stdout)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_chat_tokens_get_the_next_ids_and_mean_rows(corpus, imported):
    from tokenizers import Tokenizer

    from tfkit.hf.tokenizer import has_chat_tokens, special_tokens

    _, _, ids = corpus
    theirs, folder, run, output = imported
    added = {USER: ids, ASSISTANT: ids + 1, END: ids + 2}
    assert output["chat_tokens"] == added and output["notes"] == []
    assert output["model"]["vocab_size"] == ids + 3
    record = json.loads((run / "train_config.json").read_text())
    assert record["model"]["vocab_size"] == ids + 3 and record["meta"]["chat_tokens"]["added"] == added
    text = (run / "tokenizer.json").read_text()
    assert has_chat_tokens(text) and special_tokens(text) == [EOT, USER, ASSISTANT, END]
    before, after = Tokenizer.from_file(str(folder / "tokenizer.json")), Tokenizer.from_str(text)
    assert after.token_to_id(EOT) == before.token_to_id(EOT) == ids - 1
    story = (corpus[0] / "stories.txt").read_text()[:500]
    assert after.encode(story).ids == before.encode(story).ids
    loaded = load_run(run)
    assert loaded.model_config.vocab_size == ids + 3
    hf_tables = {"transformer.wte.weight": theirs.transformer.wte.weight, "lm_head.weight": theirs.lm_head.weight}
    for name, original in hf_tables.items():
        grown = loaded.state[name]
        assert torch.equal(grown[:ids], original.detach())
        mean = original.detach().double().mean(dim=0).float()
        assert torch.allclose(grown[ids:], mean.expand(3, -1), atol=1e-7), name
    assert (loaded.state["lm_head.weight"] is loaded.state["transformer.wte.weight"]) == (
        theirs.config.tie_word_embeddings
    )


def test_the_grown_model_keeps_the_original_logits(corpus, imported):
    _, _, ids = corpus
    theirs, _, run, _ = imported
    ours = load_run(run).build().eval()
    tokens = torch.randint(0, ids, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, expected = ours(tokens), theirs(tokens).logits
    assert logits.shape[-1] == ids + 3
    assert (logits[..., :ids] - expected).abs().max().item() < 1e-4
    # a mean row's logit is the mean logit (GPT-2's head has no bias)
    assert (logits[..., ids:] - expected.mean(dim=-1, keepdim=True)).abs().max().item() < 1e-4


def test_without_chat_tokens_the_run_is_as_before_and_tokenize_names_the_option(corpus, tmp_path):
    root, tokenizer, ids = corpus
    gpt2(corpus, tmp_path / "hf")
    plain = invoke("import", "hf", tmp_path / "hf", "--out", tmp_path / "run", "--json")
    assert plain.exit_code == 0, plain.output
    assert "chat_tokens" not in json.loads(plain.stdout)
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == tokenizer.read_bytes()
    record = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert record["model"]["vocab_size"] == ids and "chat_tokens" not in record["meta"]
    out = tmp_path / "sft"
    args = ("--dataset-dir", root / "sft_raw", "--tokenizer-path", tmp_path / "run" / "tokenizer.json")
    result = invoke("tokenizer", "tokenize", *args, "--output-dir", out, "--mode", "sft")
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert f"no {USER} token" in result.stderr and "--chat-tokens" in result.stderr
    assert not out.exists()


def tokenize(root, run, mode, out):
    args = ("--dataset-dir", root / f"{mode}_raw", "--tokenizer-path", run / "tokenizer.json", "--output-dir", out)
    result = invoke("tokenizer", "tokenize", *args, "--mode", mode, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_sft_then_dpo_from_the_chat_run_learn(corpus, imported, tmp_path):
    root, _, _ = corpus
    _, _, run, _ = imported
    sft_data, pairs = tokenize(root, run, "sft", tmp_path / "sft_data"), tokenize(root, run, "dpo", tmp_path / "pairs")
    sft = invoke("train", "sft", "--init", run, "--data", sft_data, "--out", tmp_path / "sft", *SFT.split())
    assert sft.exit_code == 0, sft.output
    val = [float(r["val_loss"]) for r in read_csv(tmp_path / "sft" / "val_log.csv")]
    assert len(val) == 4 and val == sorted(val, reverse=True) and val[-1] < val[0] - 0.5, val  # at steps 10 .. 40
    dpo = invoke("train", "dpo", "--init", tmp_path / "sft", "--data", pairs, "--out", tmp_path / "dpo", *DPO.split())
    assert dpo.exit_code == 0, dpo.output
    rows = read_csv(tmp_path / "dpo" / "train_log.csv")
    assert round(float(rows[0]["train_loss"]), 4) == 0.6931  # policy == reference at the first step
    assert float(rows[0]["rewards_accuracies"]) == 0 and float(rows[0]["rewards_margins"]) == 0
    assert float(rows[-1]["rewards_accuracies"]) > 0.9 and float(rows[-1]["rewards_margins"]) > 0.5
    assert float(rows[-1]["train_loss"]) < math.log(2) - 0.05
    summary = json.loads((tmp_path / "dpo" / "summary.json").read_text())
    assert summary["val_rewards_accuracies"] > 0.9 and summary["val_rewards_margins"] > 0.5
    assert load_run(tmp_path / "dpo").model_config == load_run(run).model_config


def test_the_export_loads_in_transformers_with_the_chat_template(corpus, imported, tmp_path):
    import datasets

    root, _, ids = corpus
    _, _, run, _ = imported
    assert invoke("export", "hf", run, tmp_path / "hf").exit_code == 0
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert "chat_template" in config and config["additional_special_tokens"] == [USER, ASSISTANT, END]
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [ids - 1, ids + 2]  # <|endoftext|> and <|end|>
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert model.config.vocab_size == ids + 3
    sft = datasets.load_from_disk(str(tokenize(root, run, "sft", tmp_path / "sft_data")))["train"]
    records = [json.loads(line) for line in (root / "sft_src" / "train.jsonl").read_text().splitlines()]
    for record, row in list(zip(records, sft, strict=True))[:8]:
        user = f"{record['instruction']}\n\n{record['input']}" if record["input"] else record["instruction"]
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
        assert tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"] == row["input_ids"]
    tokens = torch.tensor([sft[0]["input_ids"]])
    with torch.no_grad():
        ours = load_run(run).build().eval()(tokens)
        assert (model(tokens).logits - ours).abs().max().item() < 1e-4


def test_chat_tokens_on_a_tokenizer_that_has_them_add_nothing(imported, tmp_path):
    _, _, run, _ = imported
    assert invoke("export", "hf", run, tmp_path / "hf").exit_code == 0
    again = invoke("import", "hf", tmp_path / "hf", "--out", tmp_path / "again", "--chat-tokens")
    assert again.exit_code == 0, again.output
    assert "already has" in again.stderr and "--chat-tokens added nothing" in again.stderr
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()
    before, after = load_run(run), load_run(tmp_path / "again")
    assert after.model_config == before.model_config
    assert all(torch.equal(after.state[k], before.state[k]) for k in before.state)
    assert "chat_tokens" not in json.loads((tmp_path / "again" / "train_config.json").read_text())["meta"]


def test_a_padded_embedding_gives_its_unused_rows_first(corpus, tmp_path):
    _, _, ids = corpus
    theirs = gpt2(corpus, tmp_path / "hf", vocab_size=ids + 2)  # two rows no token uses
    result = invoke("import", "hf", tmp_path / "hf", "--out", tmp_path / "run", "--chat-tokens", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["chat_tokens"] == {USER: ids, ASSISTANT: ids + 1, END: ids + 2}
    loaded = load_run(tmp_path / "run")
    assert loaded.model_config.vocab_size == ids + 3  # one row more, not three
    meta = json.loads((tmp_path / "run" / "train_config.json").read_text())["meta"]["chat_tokens"]
    assert meta["reused_padding_rows"] == 2
    wte = theirs.transformer.wte.weight.detach()
    mean = wte[:ids].double().mean(dim=0).float()  # of the tokenizer's rows, not the unused ones
    assert torch.allclose(loaded.state["transformer.wte.weight"][ids:], mean.expand(3, -1), atol=1e-7)
    assert torch.equal(loaded.state["transformer.wte.weight"][:ids], wte[:ids])
