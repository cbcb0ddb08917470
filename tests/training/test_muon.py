"""`--optimizer muon`: Muon on the blocks' hidden matrices, AdamW on the rest, through every path of a run.

The groups partition the parameters; the update is `torch.optim.Muon`'s bit for bit; a skipped
step (`found_inf`) changes nothing; a killed run resumes to the numbers of an uninterrupted one;
`--spike-action skip` drops the update; two DDP processes train what one does; FSDP is refused;
and it learns mess3.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import socket
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, tiny_cli_args
from tests.training.test_resume import assert_same_run, kill_and_resume, reference_run
from tests.training.test_spikes import POISONED_STEP, poisoned, spike_config, spike_rows  # noqa: F401
from tfkit.config import ModelConfig, OptimConfig, RunConfig
from tfkit.config.presets import preset_section
from tfkit.models.gpt import GPT
from tfkit.training import loop
from tfkit.training.optim import MuonAdamW, build_optimizer

CPU = torch.device("cpu")
MUON = OptimConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1, muon_ns_steps=5)


def tiny_gpt(**model) -> GPT:
    torch.manual_seed(0)
    shape = {"depth": 2, "width": 32, "num_heads": 2, "vocab_size": 11, "max_seq_len": 8}
    return GPT(ModelConfig(**{**shape, **preset_section("nanogpt", "model"), **model}))  # GPT-2's block unless given


@pytest.mark.parametrize(
    "model",
    [{}, {"tie_embeddings": False, "bias": True, "positions": "rotary", "qk_norm": True, "norm": "rmsnorm"}],
)
def test_the_groups_partition_the_parameters_with_the_hidden_matrices_under_muon(model):
    gpt = tiny_gpt(**model)
    optimizer = build_optimizer(gpt, MUON, CPU)
    grouped = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(gpt.parameters()))  # each exactly once
    [muon] = [g for g in optimizer.param_groups if g["muon"]]
    in_blocks = {id(p) for p in gpt.transformer.h.parameters()}
    hidden = {id(p) for p in gpt.transformer.h.parameters() if p.dim() == 2}
    assert {id(p) for p in muon["params"]} == hidden and hidden  # every block matrix, nothing else
    adamw = {id(p) for g in optimizer.param_groups if not g["muon"] for p in g["params"]}
    assert id(gpt.transformer.wte.weight) in adamw and id(gpt.lm_head.weight) in adamw  # embedding, head
    assert all(
        p.dim() < 2 or id(p) not in in_blocks for g in optimizer.param_groups if not g["muon"] for p in g["params"]
    )
    # Muon follows the schedule at --muon-lr, and its decay shrinks a matrix as AdamW's would (lr_t * wd)
    assert muon["lr_scale"] * MUON.lr == pytest.approx(MUON.muon_lr)
    assert muon["lr_scale"] * muon["weight_decay"] == pytest.approx(MUON.weight_decay)
    assert isinstance(build_optimizer(gpt, OptimConfig(optimizer="adamw"), CPU), torch.optim.AdamW)
    assert not isinstance(build_optimizer(gpt, OptimConfig(optimizer="adamw"), CPU), MuonAdamW)
    assert isinstance(build_optimizer(gpt, OptimConfig(), CPU), MuonAdamW)  # the default


def step_with(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    optimizer.step()


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon is new in this torch")
def test_the_update_is_torch_muons_bit_for_bit():
    torch.manual_seed(0)
    ours = [torch.randn(48, 16, requires_grad=True), torch.randn(16, 64, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    group = {"params": ours, "muon": True, "weight_decay": 0.1, "momentum": 0.95}
    mine = MuonAdamW([group], ns_dtype=torch.bfloat16, lr=0.02, fused=True)  # on CPU tfkit's default is float32
    reference = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, momentum=0.95)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in ours]
        mine.found_inf = torch.zeros(())
        step_with(mine, ours, grads)
        step_with(reference, theirs, grads)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


def test_found_inf_leaves_every_parameter_and_state_unchanged_and_the_state_round_trips():
    gpt = tiny_gpt(tie_embeddings=False)
    optimizer = build_optimizer(gpt, MUON, CPU)
    params = list(gpt.parameters())
    torch.manual_seed(1)
    optimizer.found_inf = torch.zeros(())
    step_with(optimizer, params, [torch.randn_like(p) for p in params])
    before = [p.detach().clone() for p in params]
    state = {k: v.clone() for s in optimizer.state.values() for k, v in s.items() if k == "momentum_buffer"}
    assert state  # Muon's momentum buffers exist
    saved = copy.deepcopy(optimizer.state_dict())  # as a checkpoint holds it: not the live tensors
    optimizer.found_inf = torch.ones(())
    step_with(optimizer, params, [torch.full_like(p, float("nan")) for p in params])
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))
    buffers = {k: v for s in optimizer.state.values() for k, v in s.items() if k == "momentum_buffer"}
    assert all(torch.equal(state[k], buffers[k]) for k in state)
    # a new optimizer loaded from the state takes the next step exactly as this one does
    clone = tiny_gpt(tie_embeddings=False)
    clone.load_state_dict(gpt.state_dict())
    other = build_optimizer(clone, MUON, CPU)
    other.load_state_dict(saved)
    grads = [torch.randn_like(p) for p in params]
    for opt, ps in ((optimizer, params), (other, list(clone.parameters()))):
        opt.found_inf = torch.zeros(())
        step_with(opt, ps, grads)
    assert all(torch.equal(a, b) for a, b in zip(params, clone.parameters(), strict=True))


def test_ns_steps_reach_the_update_and_a_checkpoint_without_them_takes_five():
    """`--muon-ns-steps` changes the update; an optimizer state saved before the option existed
    (no `ns_steps` in its Muon group) steps as five iterations do, whatever the new run's option."""
    models = [tiny_gpt() for _ in range(3)]
    five = build_optimizer(models[0], MUON, CPU)
    three = build_optimizer(models[1], dataclasses.replace(MUON, muon_ns_steps=3), CPU)
    assert [g["ns_steps"] for g in three.param_groups if g["muon"]] == [3]
    old = copy.deepcopy(five.state_dict())
    for group in old["param_groups"]:
        group.pop("ns_steps", None)
    loaded = build_optimizer(models[2], dataclasses.replace(MUON, muon_ns_steps=3), CPU)
    loaded.load_state_dict(old)
    torch.manual_seed(1)
    grads = [torch.randn_like(p) for p in models[0].parameters()]
    for opt, model in zip((five, three, loaded), models, strict=True):
        opt.found_inf = torch.zeros(())
        step_with(opt, list(model.parameters()), grads)
    weights = [dict(m.named_parameters())["transformer.h.0.mlp.c_fc.weight"] for m in models]
    assert torch.equal(weights[0], weights[2])
    assert not torch.allclose(weights[0], weights[1])


def test_spike_skip_leaves_the_weights_unchanged_under_muon(tiny_config, poisoned):  # noqa: F811
    result = loop.train(spike_config(tiny_config, "skip", **{"optim.optimizer": "muon"}))
    assert result.status == "completed" and result.summary["skipped_steps"] == 1
    before, after = poisoned[POISONED_STEP - 1], poisoned[POISONED_STEP]
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = poisoned[POISONED_STEP + 1]
    assert not torch.equal(after["transformer.h.0.mlp.c_fc.weight"], changed["transformer.h.0.mlp.c_fc.weight"])
    assert [r["action"] for r in spike_rows(result.run_dir)] == ["skip"]


MUON_RUN = [
    "train",
    "pretrain",
    *tiny_cli_args(Path("unused"))[:-2],
    "--optimizer",
    "muon",
    "--schedule",
    "wsd",
    "--max-steps",
    "30",
    "--checkpoint-every",
    "10",
    "--log-every",
    "5",
    "--eval-every",
    "10",
]


def test_a_killed_muon_run_resumes_bit_for_bit(tmp_path, one_thread):
    reference = reference_run(MUON_RUN, tmp_path / "reference")
    # killed as it starts the checkpoint of step 30: the last complete one is step 20
    tokens_per_step = TINY["data.batch_size"] * TINY["data.seq_len"]
    resumed = kill_and_resume(MUON_RUN, tmp_path / "run", 30 * tokens_per_step)
    assert_same_run(reference, resumed)


def test_muon_learns_mess3(tmp_path, one_thread):
    config = RunConfig().with_updates(
        {
            **{k: v for k, v in TINY.items() if not k.startswith("train.")},
            "model.depth": 1,
            "data.seq_len": 10,
            "data.batch_size": 64,
            "data.train_sequences": 4096,
            "data.val_examples": 512,
            "optim.optimizer": "muon",
            "train.max_steps": 150,
            "train.eval_every": 150,
            "train.device": "cpu",
            "train.log_logits": False,
            "log.out": str(tmp_path / "run"),
        }
    )
    assert loop.train(config).status == "completed"
    with open(tmp_path / "run" / "val_log.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    # the unigram predictor's excess is ~0.0097 nats; broken hidden updates leave ~0.004 here
    assert float(row["excess_loss"]) < 0.0025


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ddp_processes_train_what_one_does_under_muon(tmp_path):
    from tests.training.test_ddp import SHAPE, assert_two_processes_log_what_one_does

    args = [*SHAPE, "--optimizer", "muon", "--max-steps", "10", "--checkpoint-every", "10"]
    assert_two_processes_log_what_one_does(args, tmp_path)


@pytest.mark.slow
def test_fsdp_killed_and_resumed_trains_what_one_process_does_under_muon(tmp_path):
    """Each rank holds a shard of every matrix; Muon orthogonalises the whole one (gathered) and
    moves its own rows, so the sharded run logs the numbers of one process, through a kill -9."""
    from typer.testing import CliRunner

    from tests.training.test_ddp import SHAPE, assert_close, numbers, torchrun
    from tfkit.cli.app import app

    args = [*SHAPE, "--optimizer", "muon"]  # 20 steps, a checkpoint every 10
    out = tmp_path / "fsdp"
    sharded = [*args, "--parallel", "fsdp", "--batch-size", "8", "--out", str(out)]
    killed = torchrun(*sharded, env={"TFKIT_KILL_AT": f"{20 * 32 * 8}:1"})  # rank 0, as step 20 saves
    assert killed.returncode != 0 and (out / "checkpoints" / f"{10 * 32 * 8}.pt").exists()
    resumed = torchrun(*sharded, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one = CliRunner().invoke(app, ["train", "pretrain", *args, "--batch-size", "16", "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    for log in ("train_log.csv", "val_log.csv"):
        assert_close(numbers(out / log), numbers(tmp_path / "one" / log), rel=1e-4)
