"""An imported run works where a run does: generate (moved too), sft then dpo --init, export hf, budget, beliefs.

The models imported are GPT-2, Llama, and two Llamas built as Llama 3 checkpoints are:
grouped-query attention, rms_norm_eps 1e-5, and llama3 or linear rope scaling."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch
import yaml

from tests.chatdata import one_torch_thread, rule_pairs, save_splits, sft_examples  # noqa: F401
from tests.hf.conftest import LLAMA_GQA, LLAMA_LINEAR, invoke, transformers_model
from tfkit.training.load import load_run

transformers = pytest.importorskip("transformers")

WORDS = 16  # ids 0..15 are words, 16 is <|endoftext|>: a vocabulary of 17
GENERATE = "--temperature 0 --max-new-tokens 10 --json --device cpu"
SFT = "--batch-size 8 --max-steps 30 --lr 3e-3 --warmup-steps 0 --log-every 1 --eval-every 30 --device cpu -q"
DPO = (
    "--beta 0.1 --batch-size 16 --lr 1e-3 --warmup-steps 0 --max-steps 40 --log-every 1 --eval-every 40 --device cpu -q"
)


# name -> (model_type, config beside transformers_model's)
MODELS = {
    "gpt2": ("gpt2", {}),
    "llama": ("llama", {}),
    "llama-gqa": ("llama", LLAMA_GQA),
    "llama-linear": ("llama", LLAMA_LINEAR),
}


@pytest.fixture(scope="module", params=list(MODELS))
def imported(request, tmp_path_factory):
    """(model_type, the transformers model, its folder, the run imported from it)."""
    root = tmp_path_factory.mktemp(request.param)
    kind, config = MODELS[request.param]
    extra = {"bos_token_id": WORDS, "eos_token_id": WORDS} if kind == "llama" else {}
    theirs = transformers_model(root / "hf", kind, words=WORDS, **extra, **config)
    result = invoke("import", "hf", root / "hf", "--out", root / "run")
    assert result.exit_code == 0, result.output
    return kind, theirs, root / "hf", root / "run"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_moved_imported_run_generates_what_transformers_generates(imported, tmp_path):
    kind, theirs, folder, _ = imported
    assert invoke("import", "hf", folder, "--out", tmp_path / "here").exit_code == 0
    assert json.loads((tmp_path / "here" / "train_config.json").read_text())["meta"]["tokenizer_path"] == (
        "tokenizer.json"
    )
    shutil.move(tmp_path / "here", tmp_path / "there")
    prompt = [3, 1, 4, 1, 5]
    with torch.no_grad():
        hf = theirs.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=WORDS)
    result = invoke("generate", "--run", tmp_path / "there", "--prompt", "w3 w1 w4 w1 w5", *GENERATE.split())
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["token_ids"] == hf[0, 5:].tolist()


def test_an_imported_run_computes_the_logits_transformers_computes(imported):
    _, theirs, _, run = imported
    ours = load_run(run).build().eval()
    ids = torch.randint(0, WORDS + 1, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max().item() < 1e-4


def test_sft_then_dpo_from_an_imported_run_learn(imported, tmp_path):
    kind, _, _, run = imported
    sft_data = save_splits(
        tmp_path / "sft_data", {"train": sft_examples(48, WORDS, 0), "validation": sft_examples(16, WORDS, 1)}
    )
    pairs = save_splits(tmp_path / "pairs", {"train": rule_pairs(64, WORDS, 0), "validation": rule_pairs(32, WORDS, 1)})
    sft = invoke("train", "sft", "--init", run, "--data", sft_data, "--out", tmp_path / "sft", *SFT.split())
    assert sft.exit_code == 0, sft.output
    rows = read_csv(tmp_path / "sft" / "train_log.csv")
    assert float(rows[-1]["train_loss"]) < 0.8 * float(rows[0]["train_loss"])
    dpo = invoke("train", "dpo", "--init", tmp_path / "sft", "--data", pairs, "--out", tmp_path / "dpo", *DPO.split())
    assert dpo.exit_code == 0, dpo.output
    rows = read_csv(tmp_path / "dpo" / "train_log.csv")
    assert round(float(rows[0]["train_loss"]), 4) == 0.6931  # policy == reference at the first step
    assert float(rows[-1]["rewards_accuracies"]) > 0.9 and float(rows[-1]["rewards_margins"]) > 0
    assert float(rows[-1]["train_loss"]) < math.log(2) - 0.05
    summary = json.loads((tmp_path / "dpo" / "summary.json").read_text())
    assert summary["val_rewards_accuracies"] > 0.9
    assert load_run(tmp_path / "dpo").model_config == load_run(run).model_config  # the imported model throughout


def test_an_imported_run_exports_back_to_the_same_model(imported, tmp_path):
    from safetensors.torch import load_file

    kind, theirs, folder, run = imported
    result = invoke("export", "hf", run, tmp_path / "back")
    assert result.exit_code == 0, result.output
    before, after = (
        load_file(str(folder / "model.safetensors")),
        load_file(str(tmp_path / "back" / "model.safetensors")),
    )
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert {k: config[k] for k in ("model_type", "vocab_size", "tie_word_embeddings")} == {
        "model_type": kind,
        "vocab_size": WORDS + 1,
        "tie_word_embeddings": theirs.config.tie_word_embeddings,
    }
    assert "tfkit_data" not in config  # the source is no built-in process
    if kind == "llama":
        original = json.loads((folder / "config.json").read_text())
        for key in ("num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters"):
            assert config[key] == original[key], key
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    if kind == "llama":  # as transformers reads them: config.json has rope_scaling (4.x) and rope_parameters (5.x)
        for key in ("num_key_value_heads", "rms_norm_eps", "rope_parameters"):
            assert getattr(again.config, key) == getattr(theirs.config, key), key
    ids = torch.randint(0, WORDS + 1, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, theirs(ids).logits)


def test_budget_counts_the_imported_model_from_its_model_section(imported, tmp_path):
    """`tfkit budget` takes options, not a run: the model section of the run's train_config.json as --config."""
    _, theirs, _, run = imported
    record = json.loads((run / "train_config.json").read_text())
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({"model": record["model"]}))
    result = invoke("budget", "--config", tmp_path / "model.yaml", "--seq-len", "32", "--json")
    assert result.exit_code == 0, result.output
    # transformers counts GPT-2's attention-mask buffers as none, parameters alike: a tied matrix once
    assert json.loads(result.stdout)["num_params"] == record["meta"]["num_params"] == theirs.num_parameters()


def test_beliefs_refuse_an_imported_model_that_has_no_process(imported):
    _, _, folder, run = imported
    result = invoke("analyze", "beliefs", run, "--num-sequences", "32", "--no-plots", "--quiet")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "not on a built-in process" in result.stderr and str(folder.resolve()) in result.stderr


def test_a_process_run_exported_and_imported_back_takes_analyze_beliefs(trained, tmp_path):
    run = trained("gpt2-tied")  # mess3, --seq-len 16
    assert invoke("export", "hf", run, tmp_path / "hf").exit_code == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["tfkit_data"]["data"] == "mess3"
    assert invoke("import", "hf", tmp_path / "hf", "--out", tmp_path / "back").exit_code == 0
    result = invoke("analyze", "beliefs", tmp_path / "back", "--num-sequences", "64", "--no-plots", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "back" / "beliefs.json").is_file()
    data = json.loads((tmp_path / "back" / "train_config.json").read_text())["data"]
    assert data["data"] == "mess3" and data["seq_len"] == 16
