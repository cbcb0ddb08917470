"""`tfkit tokenizer`: train a BPE tokenizer, tokenize datasets, inspect and count the result."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any

import typer

from tfkit.cli._errors import command
from tfkit.cli._options import Json, Quiet
from tfkit.cli._output import console, err_console, is_interactive, key_value_table, print_json
from tfkit.errors import DataError

tokenizer_app = typer.Typer(
    help="Tokenizers: train a byte-level BPE, tokenize datasets into shards, inspect and count tokens.",
    no_args_is_help=True,
)

DatasetDir = Annotated[
    Path, typer.Option("--dataset-dir", help="A dataset saved by `tfkit data download`.", show_default=False)
]
TokenizerPath = Annotated[Path, typer.Option("--tokenizer-path", help="The tokenizer.json to use.", show_default=False)]


class ProgressBar:
    """A rich progress bar of documents and MB/s; silent when quiet or not on a terminal."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label = label
        self.enabled = is_interactive() and not quiet
        self.progress: Any = None
        self.task: Any = None
        self.nbytes = 0

    def __enter__(self) -> ProgressBar:
        if not self.enabled:
            import datasets

            datasets.disable_progress_bars()  # quiet and machine-readable off a terminal
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("documents"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=console,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def start(self, split: str, documents: int, nbytes: int) -> None:
        if self.progress is not None:
            self.nbytes = 0
            self.task = self.progress.add_task(f"{self.label} {split}", total=documents, rate="")

    def advance(self, documents: int, nbytes: int) -> None:
        if self.progress is None or self.task is None:
            return
        self.nbytes += nbytes
        elapsed = self.progress.tasks[self.task].elapsed or 1e-9
        self.progress.update(self.task, advance=documents, rate=f"{self.nbytes / 1e6 / elapsed:,.1f} MB/s")


@command(tokenizer_app, "train")
def train(
    dataset_dir: DatasetDir,
    output_path: Annotated[Path, typer.Option("--output-path", help="Where to write tokenizer.json.")] = Path(
        "tokenizer.json"
    ),
    vocab_size: Annotated[
        int, typer.Option("--vocab-size", help="Vocabulary size, bytes and special tokens included.")
    ] = 8192,
    min_frequency: Annotated[
        int, typer.Option("--min-frequency", help="Merge only pairs seen at least this often.")
    ] = 2,
    profile: Annotated[
        str, typer.Option("--profile", help="Special tokens: pretrain (end-of-text) or chat (also role/turn tokens).")
    ] = "pretrain",
    split: Annotated[str, typer.Option("--split", help="The split to learn from.")] = "train",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Documents read per batch.")] = 1000,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output-path.")] = False,
    quiet: Quiet = False,
    json_output: Json = False,
) -> None:
    """Train a byte-level BPE tokenizer on a dataset's train split (streamed in batches)."""
    from tfkit.tokenizer.train import train_tokenizer

    with ProgressBar("reading", quiet or json_output) as bar:
        result = train_tokenizer(
            dataset_dir,
            output_path,
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            profile=profile,
            split=split,
            batch_size=batch_size,
            overwrite=overwrite,
            progress=bar,
        )
    for warning in result.warnings:
        err_console.print(f"[bold yellow]Warning:[/] {warning}", highlight=False, soft_wrap=True)
    data = {
        "output_path": str(result.output_path),
        "vocab_size": result.vocab_size,
        "requested_vocab_size": result.requested_vocab_size,
        "profile": result.profile,
        "special_tokens": list(result.special_tokens),
        "documents": result.num_documents,
        "corpus_bytes": result.corpus_bytes,
        "seconds": result.seconds,
        "mb_per_s": result.mb_per_s,
        "sha256": result.sha256,
        "warnings": result.warnings,
    }
    if json_output:
        print_json(data)
        return
    if quiet:
        return
    console.print(
        key_value_table(
            f"Tokenizer {result.output_path}",
            [
                ("vocab size", result.vocab_size),
                ("special tokens", " ".join(result.special_tokens)),
                ("documents", result.num_documents),
                ("corpus size (MB)", result.corpus_bytes / 1e6),
                ("time (s)", result.seconds),
                ("throughput (MB/s)", result.mb_per_s),
            ],
        )
    )


@command(tokenizer_app, "tokenize")
def tokenize(
    dataset_dir: DatasetDir,
    tokenizer_path: TokenizerPath,
    output_dir: Annotated[
        Path, typer.Option("--output-dir", help="Folder for the shards or datasets.", show_default=False)
    ],
    mode: Annotated[
        str, typer.Option("--mode", help="pretrain (token shards), sft (ids + loss mask) or dpo (chosen/rejected ids).")
    ] = "pretrain",
    num_proc: Annotated[
        int, typer.Option("--num-proc", help="Processes encoding in parallel (same output for any).")
    ] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Documents per encode_batch call.")] = 1000,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace tokenized data already in --output-dir.")
    ] = False,
    quiet: Quiet = False,
    json_output: Json = False,
) -> None:
    """Tokenize every split: token shards for pretraining, token-id datasets for SFT and DPO."""
    from tfkit.tokenizer.encode import tokenize_dataset

    with ProgressBar("tokenizing", quiet or json_output) as bar:
        result = tokenize_dataset(
            dataset_dir,
            tokenizer_path,
            output_dir,
            mode=mode,
            num_proc=num_proc,
            batch_size=batch_size,
            overwrite=overwrite,
            progress=bar,
        )
    if result.removed_leftovers:
        names = ", ".join(p.name for p in result.removed_leftovers)
        err_console.print(
            f"Note: removed {len(result.removed_leftovers)} folder(s) left by an interrupted tokenize "
            f"in {result.output_dir.parent}: {names}",
            highlight=False,
            soft_wrap=True,
        )
    splits = {
        k: {"documents": s.documents, "tokens": s.tokens, "text_bytes": s.nbytes} for k, s in result.splits.items()
    }
    if json_output:
        print_json(
            {
                "output_dir": str(result.output_dir),
                "mode": result.mode,
                "vocab_size": result.vocab_size,
                "num_proc": result.num_proc,
                "seconds": result.seconds,
                "mb_per_s": result.mb_per_s,
                "splits": splits,
            }
        )
        return
    if quiet:
        return
    from rich.table import Table

    table = Table(title=f"{result.mode} data in {result.output_dir}", title_justify="left")
    tokens = "tokens (with end-of-text)" if result.mode == "pretrain" else "tokens"
    for col in ("split", "documents", tokens, "text (MB)"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for name, s in result.splits.items():
        table.add_row(name, f"{s.documents:,}", f"{s.tokens:,}", f"{s.nbytes / 1e6:.2f}")
    console.print(table)
    console.print(
        f"{result.nbytes / 1e6:.2f} MB in {result.seconds:.2f} s = {result.mb_per_s:.2f} MB/s "
        f"with {result.num_proc} process(es); vocabulary {result.vocab_size:,}",
        highlight=False,
    )


@command(tokenizer_app, "count")
def count(
    tokenized_dir: Annotated[
        Path,
        typer.Option("--tokenized-dir", help="A folder written by `tfkit tokenizer tokenize`.", show_default=False),
    ],
    json_output: Json = False,
) -> None:
    """Documents and tokens per split and in total, with mean/median/max tokens per document."""
    from tfkit.tokenizer.count import count_tokens

    rows = count_tokens(tokenized_dir)
    if json_output:
        print_json([r.to_dict() for r in rows])
        return
    from rich.table import Table

    table = Table(title=f"Tokens in {tokenized_dir}", title_justify="left")
    for col in ("split", "documents", "tokens", "mean", "median", "max"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for r in rows:
        if r.split == "total":
            table.add_section()
        table.add_row(
            r.split,
            f"{r.documents:,}",
            f"{r.tokens:,}",
            f"{r.mean:,.1f}",
            f"{r.median:,.1f}",
            f"{r.max:,}",
            style="bold" if r.split == "total" else None,
        )
    console.print(table)
    if rows[-1].shard_tokens is not None:
        console.print(f"shard tokens (with one end-of-text per document): {rows[-1].shard_tokens:,}", highlight=False)


_STYLES = ("black on bright_cyan", "black on bright_yellow")


def _render_document(view: Any, max_tokens: int) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console.print(
        f"[bold]{view.split}[/] document {view.index:,} of {view.num_documents:,}: "
        f"{len(view.text):,} characters, {len(view.ids):,} tokens"
    )
    console.print(Panel(Text(view.text), title="raw text", title_align="left"))
    tokens = Text()
    if view.spans:
        for i, (lo, hi) in enumerate(view.spans):
            tokens.append(view.text[lo:hi], style=_STYLES[i % 2])
    else:
        for i, piece in enumerate(view.token_texts):
            tokens.append(piece, style=_STYLES[i % 2])
    console.print(Panel(tokens, title="tokens (alternating colours)", title_align="left"))
    table = Table(title_justify="left")
    for col in ("#", "id", "piece", "text"):
        table.add_column(col, justify="right" if col in ("#", "id") else "left")
    for i, (token_id, piece, text) in enumerate(zip(view.ids, view.pieces, view.token_texts, strict=False)):
        if i == max_tokens:
            table.add_row("...", "", f"{len(view.ids) - max_tokens:,} more", "")
            break
        table.add_row(str(i), str(token_id), Text(piece), Text(repr(text)))
    console.print(table)
    ok = "[green]yes[/]" if view.round_trips else "[red]no[/]"
    console.print(f"decoding the ids gives back the raw text: {ok}")
    if not view.matches_encoding:
        console.print("[yellow]encoding the raw text again gives different ids than the shard holds[/]")


PROMPT_STYLE, SCORED_STYLE = "dim", "bold green"
MARKS = ("[[", "]]")  # around scored tokens when the output has no styles (not a terminal, or --markers)


def _chat_text(sequence: Any, markers: bool) -> Any:
    """A sequence's rendering: prompt runs dim, scored runs bold green (and between [[ ]] with `markers`)."""
    from rich.text import Text

    text = Text()
    for segment in sequence.segments:
        if segment.scored:
            body = f"{MARKS[0]}{segment.text}{MARKS[1]}" if markers else segment.text
            text.append(body, style=SCORED_STYLE)
        else:
            text.append(segment.text, style=PROMPT_STYLE)
    return text


def _token_table(sequence: Any, max_tokens: int) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{sequence.name} tokens", title_justify="left")
    for col in ("#", "id", "piece", "text", "scored"):
        table.add_column(col, justify="right" if col in ("#", "id") else "left")
    rows = zip(sequence.ids, sequence.pieces, sequence.token_texts, sequence.loss_mask, strict=False)
    for i, (token_id, piece, text, scored) in enumerate(rows):
        if i == max_tokens:
            table.add_row("...", "", f"{len(sequence.ids) - max_tokens:,} more", "", "")
            break
        style = SCORED_STYLE if scored else PROMPT_STYLE
        table.add_row(str(i), str(token_id), Text(piece), Text(repr(text)), "yes" if scored else "no", style=style)
    return table


def _render_chat(view: Any, max_tokens: int, markers: bool) -> None:
    """An SFT example or a DPO pair: the chat rendering with the loss mask visible, then the tokens."""
    from rich.panel import Panel
    from rich.table import Table

    plain = markers or console.color_system is None  # no styles: the scored runs carry markers instead
    if view.mode == "sft":
        (example,) = view.sequences
        console.print(
            f"[bold]{view.split}[/] example {view.index:,} of {view.num_documents:,}: "
            f"{len(example.ids):,} tokens, {example.scored:,} scored"
        )
    else:
        console.print(
            f"[bold]{view.split}[/] pair {view.index:,} of {view.num_documents:,}: prompt "
            f"{view.prompt_tokens:,} tokens; "
            + ", ".join(f"{s.name} {len(s.ids):,} tokens ({s.scored:,} scored)" for s in view.sequences)
        )
    if plain:
        console.print(f"scored tokens (the ones in the loss) are between {MARKS[0]} and {MARKS[1]}", highlight=False)
    else:
        console.print(f"[{PROMPT_STYLE}]prompt (not scored)[/]  [{SCORED_STYLE}]response (scored)[/]", highlight=False)
    if plain:
        for sequence in view.sequences:
            console.print(f"{sequence.name}:" if view.mode == "dpo" else "rendering:", style="bold")
            console.print(_chat_text(sequence, markers=True))
    elif view.mode == "dpo":
        pair = Table(show_lines=True, expand=True)
        for sequence in view.sequences:
            pair.add_column(f"{sequence.name} ({sequence.scored:,} scored)", ratio=1)
        pair.add_row(*(_chat_text(s, markers=False) for s in view.sequences))
        console.print(pair)
    else:
        console.print(Panel(_chat_text(view.sequences[0], markers=False), title="rendering", title_align="left"))
    for sequence in view.sequences:
        console.print(_token_table(sequence, max_tokens))


def _page(inspector: Any, index: int, rng: random.Random, show: Any) -> None:
    """Page through examples from `index`: next, previous, jump, random, quit."""
    count = inspector.num_documents
    while True:
        try:
            answer = console.input(r"[bold]\[n]ext  \[p]revious  \[j N] jump  \[r]andom  \[q]uit >[/] ").strip().lower()
        except EOFError:
            return
        if answer in ("q", "quit", "exit"):
            return
        if answer in ("", "n", "next"):
            index = min(index + 1, count - 1)
        elif answer in ("p", "prev", "previous"):
            index = max(index - 1, 0)
        elif answer in ("r", "random"):
            index = rng.randrange(count)
        elif answer.startswith("j"):
            target = answer[1:].strip()
            if not target.isdigit() or int(target) >= count:
                console.print(f"jump to a number in [0, {count - 1}], e.g. j 12")
                continue
            index = int(target)
        else:
            console.print("n, p, j N, r or q")
            continue
        show(inspector.document(index))


@command(tokenizer_app, "inspect")
def inspect(
    tokenized_dir: Annotated[
        Path,
        typer.Option(
            "--tokenized-dir",
            help="A folder from `tfkit tokenizer tokenize`: pretraining shards, SFT or DPO data.",
            show_default=False,
        ),
    ],
    raw_dataset_dir: Annotated[
        Path | None,
        typer.Option("--raw-dataset-dir", help="Pretraining shards: the raw dataset (default: the one they name)."),
    ] = None,
    tokenizer_path: Annotated[
        Path | None, typer.Option("--tokenizer-path", help="The tokenizer (default: the one the data names).")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Which split to look at.")] = "train",
    index: Annotated[int, typer.Option("--index", help="Document (or example, or pair) index to show first.")] = 0,
    random_doc: Annotated[bool, typer.Option("--random", help="Start at a random document.")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for --random.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Rows of the token table.")] = 64,
    markers: Annotated[
        bool,
        typer.Option("--markers", help="SFT / DPO: put scored tokens between [[ and ]] (always off a terminal)."),
    ] = False,
    interactive: Annotated[
        bool | None,
        typer.Option("--interactive/--no-interactive", help="Page through documents (default: on a terminal)."),
    ] = None,
    json_output: Json = False,
) -> None:
    """Show one document with its tokens: pretraining text and its round trip, or SFT / DPO chat with the loss mask."""
    from tfkit.tokenizer.inspect import ShardInspector, open_inspector

    inspector = open_inspector(tokenized_dir, raw_dataset_dir, tokenizer_path, split)
    if inspector.num_documents == 0:
        raise DataError(f"the {split!r} split holds no documents")
    rng = random.Random(seed)
    if random_doc:
        index = rng.randrange(inspector.num_documents)
    view = inspector.document(index)
    if json_output:
        print_json(view.to_dict())
        return

    def show(view: Any) -> None:
        if isinstance(inspector, ShardInspector):
            _render_document(view, max_tokens)
        else:
            _render_chat(view, max_tokens, markers)

    show(view)
    if is_interactive() if interactive is None else interactive:
        _page(inspector, index, rng, show)
