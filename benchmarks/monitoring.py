"""What the instability monitor costs against the training step it watches, measured in one process.

    python benchmarks/monitoring.py                         # small preset on CPU, ~1 min
    python benchmarks/monitoring.py --device cuda --preset gpt2

On the preset's model, optimizer and batch, alternating so that both see the same machine
load, it times (median over `--repeats`):

- one training step: forward, cross-entropy, backward, gradient clipping, fused AdamW;
- the monitor's measurement at a logged step with the defaults (`--log-logits`): the extra
  forward without gradients that records every layer's largest attention logit and the
  output-logit statistics (`tfkit.training.monitor.Monitor.before_update`);
- the same with `--log-layer-stats` too (per-block gradient norms and a copy of the
  weights before the step, then norms and update ratios after it).

It prints each in milliseconds and the overhead at the default cadence (one measurement per
`--log-every` 10 steps): measurement / (10 x step). The target is below 5%.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from tfkit.config import ModelConfig, OptimConfig
from tfkit.config.presets import preset_section
from tfkit.models.gpt import GPT
from tfkit.training.monitor import Monitor
from tfkit.training.optim import build_optimizer

PRESETS = {
    "small": dict(depth=4, width=256, num_heads=4, seq_len=128, batch_size=16, vocab_size=4096),
    "gpt2": dict(depth=12, width=768, num_heads=12, seq_len=1024, batch_size=16, vocab_size=50304),
}
LOG_EVERY = 10  # the default cadence of train rows, and so of the monitor


class Probe:
    """The piece of a training task the monitor calls: a forward of the logged micro-batch."""

    probed, output_logits = True, True

    def __init__(self, model: GPT, bf16: bool) -> None:
        self.model, self.bf16 = model, bf16

    def probe(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(batch[:, :-1])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    p = PRESETS[args.preset]
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = ModelConfig(
        depth=p["depth"],
        width=p["width"],
        num_heads=p["num_heads"],
        vocab_size=p["vocab_size"],
        max_seq_len=p["seq_len"],
        **preset_section("nanogpt", "model"),  # GPT-2's block
    )
    model = GPT(config).to(device)
    optimizer = build_optimizer(model, OptimConfig(optimizer="adamw", lr=1e-4), device)
    batch = torch.randint(0, p["vocab_size"], (p["batch_size"], p["seq_len"] + 1), device=device)
    bf16 = device.type == "cuda"
    task = Probe(model, bf16)
    logits_only = Monitor(SimpleNamespace(log_logits=True, log_layer_stats=False), model, task)
    with_layers = Monitor(SimpleNamespace(log_logits=True, log_layer_stats=True), model, task)

    def backward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten()).backward()

    def step() -> None:
        backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(fn) -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    def measured(monitor: Monitor) -> float:
        backward()  # gradients to measure, outside the timing
        seconds = timed(lambda: monitor.before_update(batch))
        optimizer.step()
        seconds += timed(monitor.after_update)
        optimizer.zero_grad(set_to_none=True)
        seconds += timed(monitor.row)  # the device read the train row makes
        return seconds

    for _ in range(3):  # warm-up
        step()
        measured(with_layers)
    steps, probes, layers = [], [], []
    for _ in range(args.repeats):
        steps.append(timed(step))
        probes.append(measured(logits_only))
        layers.append(measured(with_layers))
    step_s, probe_s, layer_s = (statistics.median(v) for v in (steps, probes, layers))
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(
        f"preset {args.preset} on {device}{threads}: depth {p['depth']}, width {p['width']}, seq_len {p['seq_len']}, "
        f"batch {p['batch_size']}, vocab {p['vocab_size']}; median of {args.repeats}"
    )
    print(f"training step                          {step_s * 1e3:8.1f} ms")
    print(
        f"monitor, --log-logits (default)        {probe_s * 1e3:8.1f} ms   "
        f"overhead every {LOG_EVERY} steps {probe_s / (LOG_EVERY * step_s):6.2%}"
    )
    print(
        f"monitor, --log-logits --log-layer-stats {layer_s * 1e3:7.1f} ms   "
        f"overhead every {LOG_EVERY} steps {layer_s / (LOG_EVERY * step_s):6.2%}"
    )


if __name__ == "__main__":
    main()
