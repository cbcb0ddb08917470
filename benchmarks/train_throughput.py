"""Training throughput of tfkit's real training loop against a plain PyTorch reference loop.

    python benchmarks/train_throughput.py                       # small preset, ~1-2 min on a 2-core CPU
    python benchmarks/train_throughput.py --preset gpt2 --device cuda

tfkit side: `tfkit.training.loop.train(config)` exactly as `tfkit train pretrain` runs it
(built-in mess3 data, CSV logging, the per-row relative-loss columns, the final eval and
checkpoint), into a temporary run directory.

Reference side: a minimal nanoGPT-style GPT of the same shape (same parameter count, checked)
and the loop nanoGPT's train.py boils down to: CPU token batch -> device, forward, fp32
cross-entropy, backward, global-norm clipping, fused AdamW (same lr/betas/eps/weight decay and
parameter groups), zero_grad; no logging, no per-step device reads.

Both loops use the same device, batch, sequence length, precision (bf16 autocast on CUDA) and
torch.compile setting (of the model only, as tfkit does), run in the same process in
alternating order (ABBA...), and are timed after warmup steps; the table shows the median
over rounds.

A third loop, `tfkit bare`, is tfkit with the monitor's logit probe off (`--no-log-logits`):
`tfkit/tfkit bare` is what the default monitoring (an extra forward without gradients every
`log_every` steps, `tfkit.training.monitor`) costs at the default cadence of 10 steps
(`--warmup` is also the logging cadence). `--layer-stats` adds `--log-layer-stats` to the
monitored loop.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tfkit.config import RunConfig, default_warmup
from tfkit.data.processes import get_process
from tfkit.models.gpt import GPT
from tfkit.training.loop import train

PRESETS = {
    # ~1-2 minutes in all on a 2-core CPU. The data (mess3) has 3 symbols, but a 4096-token
    # vocabulary gives the model a realistically sized embedding/head.
    "small": dict(depth=4, width=256, num_heads=4, seq_len=128, batch_size=16, vocab_size=4096, steps=20, warmup=10),
    # GPT-2 small (124M) shape with nanoGPT's padded vocabulary; batch sized for one 80 GB GPU.
    "gpt2": dict(depth=12, width=768, num_heads=12, seq_len=1024, batch_size=16, vocab_size=50304, steps=50, warmup=10),
}
H100_BF16_DENSE = 989e12  # H100 SXM, bf16 tensor cores, dense (no sparsity)


# --------------------------------------------------------------------------- reference model


class RefAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.c_attn = nn.Linear(width, 3 * width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class RefBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, bias=False)
        self.attn = RefAttention(width, heads, dropout)
        self.ln_2 = nn.LayerNorm(width, bias=False)
        self.c_fc = nn.Linear(width, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, width, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x)))
        return x + self.drop(self.c_proj(F.gelu(self.c_fc(self.ln_2(x)))))


class RefGPT(nn.Module):
    """nanoGPT's GPT: learned positions, pre-LN GELU blocks, no biases, tied embedding/head."""

    def __init__(self, vocab: int, seq_len: int, depth: int, width: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(seq_len, width)
        self.h = nn.ModuleList([RefBlock(width, heads, hidden, dropout) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * depth) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def sample_windows(num: int, seq_len: int, seed: int) -> torch.Tensor:
    """(num, seq_len + 1) int64 mess3 tokens on the CPU: the same kind of batches tfkit trains on."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(get_process("mess3", {}).sample(num, seq_len + 1, rng))


def lr_at(step: int, cfg, total: int) -> float:
    """nanoGPT's get_lr: linear warmup then cosine to min_lr (same schedule values as tfkit's)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_round(config: RunConfig, device: torch.device, use_compile: bool, warmup: int, steps: int):
    """Train the reference for warmup + steps steps; return (tokens/s over the timed steps, params)."""
    m, o, d = config.model, config.optim, config.data
    torch.manual_seed(config.train.seed)
    hidden = max(1, round(m.mlp_ratio * m.width))
    model = RefGPT(m.vocab_size, d.seq_len, m.depth, m.width, m.num_heads, hidden, m.dropout).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    step_model = torch.compile(model) if use_compile else model
    embeddings = {id(model.wte.weight), id(model.wpe.weight)}
    decay = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in embeddings]
    no_decay = [p for p in model.parameters() if p.dim() < 2 or id(p) in embeddings]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        fused=device.type in ("cuda", "cpu", "mps"),
    )
    total = warmup + steps
    data = sample_windows(total * d.batch_size, d.seq_len, config.train.seed + 1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    start = 0.0
    for step in range(total):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, o, total)
        window = data[step * d.batch_size : (step + 1) * d.batch_size]
        on_cuda = device.type == "cuda"
        window = window.pin_memory().to(device, non_blocking=True) if on_cuda else window.to(device)
        x, y = window[:, :-1], window[:, 1:]
        with autocast:
            logits = step_model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    elapsed = time.perf_counter() - start
    return steps * d.batch_size * d.seq_len / elapsed, num_params


# --------------------------------------------------------------------------- tfkit side


def tfkit_round(config: RunConfig, warmup: int, steps: int):
    """Run tfkit's train(); return (tokens/s over the timed steps, params, flops per token).

    Timing: train() writes a `train_log.csv` row every `log_every` steps with `time_s` (seconds
    since the loop started, taken after the row's device read, so after a sync on CUDA) and
    `tokens_seen`. With log_every = warmup, the rows at step `warmup` and `warmup + steps`
    bracket exactly `steps` steps: compilation, the first-epoch data generation and allocator
    warm-up fall before the first row, the final eval and checkpoint after the last, and the
    validation set is generated before the loop starts. Whatever the loop does per step or per
    logged row in between (logging every `warmup` steps, including the relative-loss columns
    and the CSV write) is counted, since a real run pays it too. We use this rather than the
    summary's tokens_per_s, which would include warm-up and compilation.
    """
    with tempfile.TemporaryDirectory(prefix="tfkit-bench-") as tmp:
        run_config = config.with_updates({"log.out": str(Path(tmp) / "run")})
        result = train(run_config)
        if result.status != "completed":
            raise RuntimeError(f"tfkit run {result.status}: {result.message}")
        with open(result.run_dir / "train_log.csv", newline="") as f:
            rows = {int(r["step"]): r for r in csv.DictReader(f)}
    first, last = rows[warmup], rows[warmup + steps]
    tokens = int(last["tokens_seen"]) - int(first["tokens_seen"])
    seconds = float(last["time_s"]) - float(first["time_s"])
    return tokens / seconds, result.summary["num_params"]


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--steps", type=int, help="timed steps per round (rounded up to a multiple of --warmup)")
    parser.add_argument("--warmup", type=int, help="untimed steps per round before timing (also tfkit's log_every)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each loop, alternating order")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="auto: on CUDA only")
    parser.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE, help="peak FLOP/s for MFU (CUDA)")
    parser.add_argument("--layer-stats", action="store_true", help="also --log-layer-stats in the monitored loop")
    args = parser.parse_args()

    preset = dict(PRESETS[args.preset])
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    warmup = args.warmup or preset["warmup"]
    steps = args.steps or preset["steps"]
    steps = math.ceil(steps / warmup) * warmup
    batch = args.batch_size or preset["batch_size"]
    seq_len = preset["seq_len"]
    use_compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    if device.type == "cuda":  # what tfkit's train() sets; set here too so the reference gets it
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    config = RunConfig().with_updates(
        {
            # the reference's recipe: GPT-2's block and AdamW (at the lr tfkit's default had, 3e-3)
            "model.preset": "nanogpt",
            "optim.lr": 3e-3,
            "model.depth": preset["depth"],
            "model.width": preset["width"],
            "model.num_heads": preset["num_heads"],
            "model.vocab_size": preset["vocab_size"],
            "model.max_seq_len": seq_len,
            "data.data": "mess3",
            "data.seq_len": seq_len,
            "data.batch_size": batch,
            # one epoch = exactly the steps run, so no new epoch is sampled inside the timed window
            "data.train_sequences": batch * (warmup + steps),
            "data.val_examples": batch,
            "train.max_steps": warmup + steps,
            "train.eval_every": 10**9,
            "train.device": str(device),
            "optim.warmup_steps": default_warmup(warmup + steps),  # what tfkit resolves, for both loops
            "train.compile": args.compile,
            "train.precision": "auto",
            "log.log_every": warmup,
        }
    )
    flops_per_token = GPT(config.model).flops_per_token(seq_len)
    configs = {
        "tfkit": config.with_updates({"train.log_layer_stats": args.layer_stats}),
        "tfkit bare": config.with_updates({"train.log_logits": False}),
    }

    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"preset {args.preset}: depth {preset['depth']}, width {preset['width']}, heads {preset['num_heads']}, "
        f"vocab {preset['vocab_size']}, seq_len {seq_len}, batch {batch}"
    )
    print(
        f"device {name}{threads}; compile {'on' if use_compile else 'off'}; "
        f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}; torch {torch.__version__}"
    )
    print(f"{args.rounds} rounds x ({warmup} warmup + {steps} timed steps) per loop, alternating order")
    sys.stdout.flush()

    wall0 = time.perf_counter()
    loops = ["tfkit", "tfkit bare", "reference"]
    results: dict[str, list[float]] = {k: [] for k in loops}
    params: dict[str, int] = {}
    for r in range(args.rounds):
        for which in loops if r % 2 == 0 else loops[::-1]:
            if which == "reference":
                tps, params[which] = reference_round(config, device, use_compile, warmup, steps)
            else:
                tps, params[which] = tfkit_round(configs[which], warmup, steps)
            results[which].append(tps)
        print(f"  round {r + 1}: " + ", ".join(f"{k} {results[k][-1]:,.0f} tok/s" for k in loops))
        sys.stdout.flush()

    med = {k: statistics.median(v) for k, v in results.items()}
    spread = {k: (max(v) - min(v)) / statistics.median(v) for k, v in results.items()}
    print()
    print(f"{'':12}{'tokens/s (median)':>20}{'spread':>9}{'params':>14}")
    for k in loops:
        print(f"{k:12}{med[k]:>20,.0f}{spread[k]:>8.1%}{params[k]:>14,}")
    if params["tfkit"] != params["reference"]:
        print(f"WARNING: parameter counts differ ({params['tfkit']} vs {params['reference']})")
    print(f"(spread = (max - min) / median over rounds; wall time {time.perf_counter() - wall0:.0f} s)")
    if device.type == "cuda":
        print(
            f"MFU = tokens/s * flops_per_token / peak_flops, flops_per_token = {flops_per_token:.4g} "
            f"(GPT.flops_per_token({seq_len}): 6 N_matmul + 12 depth seq_len width), "
            f"peak_flops = {args.peak_flops:.4g}"
        )
        for k in loops:
            print(f"MFU {k}: {med[k] * flops_per_token / args.peak_flops:.1%}")
    print(f"ratio tfkit/reference: {med['tfkit'] / med['reference']:.2f}")
    monitored = "logit probe" + (" and layer stats" if args.layer_stats else "")
    print(
        f"monitoring ({monitored} every {warmup} steps): tfkit/tfkit bare {med['tfkit'] / med['tfkit bare']:.3f}, "
        f"overhead {1 - med['tfkit'] / med['tfkit bare']:.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
