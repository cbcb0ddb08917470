"""`tfkit generate`: sample a reply from a trained GPT, streamed to the terminal."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from tfkit.cli._output import err_console, print_json
from tfkit.config.fields import check_device_name
from tfkit.errors import ConfigError


def generate(
    run: Annotated[str, typer.Option("--run", help="Run directory (its latest checkpoint) or checkpoint file.")],
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue; a user turn for chat-profile tokenizers.")],
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 100,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = 1.0,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k most likely tokens.")] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Sample among the most likely tokens holding this probability.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler.")] = 0,
    tokenizer_path: Annotated[
        str | None, typer.Option(help="Tokenizer to use instead of the one the run recorded.")
    ] = None,
    chat: Annotated[
        bool | None,
        typer.Option(
            "--chat/--no-chat", help="Wrap the prompt in the chat template (default: when the tokenizer has one)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the reply and its token ids as JSON at the end.")
    ] = False,
) -> None:
    """Generate a reply with a KV cache, printing tokens as they come."""
    from tfkit.models.generate import check_prompt, check_sampling, generate_text

    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    check_sampling(temperature, top_k, top_p)
    check_prompt(prompt)
    check_device_name(device)
    from tfkit.training.device import resolve_device
    from tfkit.training.load import load_run, open_tokenizer

    loaded = load_run(run, "--run")
    tokenizer = open_tokenizer(loaded, tokenizer_path)
    if tokenizer_path is not None and loaded.tokenizer_sha256:
        from tfkit.tokenizer.train import tokenizer_sha256

        if tokenizer_sha256(tokenizer_path) != loaded.tokenizer_sha256:
            err_console.print(
                f"[bold yellow]Warning:[/] {tokenizer_path} is not the tokenizer the run was trained with "
                f"({loaded.tokenizer_path}); the reply may be garbled",
                highlight=False,
                soft_wrap=True,
            )
    model = loaded.build(resolve_device(device))
    pieces = generate_text(
        model,
        tokenizer,
        prompt,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        chat=chat,
        warn=lambda message: err_console.print(f"[bold yellow]Warning:[/] {message}", highlight=False, soft_wrap=True),
    )
    ids, text = [], []
    for token, piece in pieces:
        ids.append(token)
        text.append(piece)
        if not json_output:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if json_output:
        print_json({"prompt": prompt, "text": "".join(text), "token_ids": ids, "checkpoint": str(loaded.checkpoint)})
    else:
        sys.stdout.write("\n")
