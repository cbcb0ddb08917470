"""`tfkit import hf NAME`: a Hub id goes through huggingface_hub's cache; offline and uncached: one line, exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.hf.conftest import invoke, saved_model

pytest.importorskip("transformers")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tfkit(*args, hf_home, cwd):
    """`python -m tfkit ARGS` in a fresh process (huggingface_hub reads HF_HOME and HF_HUB_OFFLINE at import)."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-m", "tfkit", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_an_uncached_hub_id_offline_is_one_line_and_exit_2(tmp_path):
    result = tfkit("import", "hf", "gpt2", "--out", tmp_path / "run", hf_home=tmp_path / "hf_home", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr + result.stdout
    assert "gpt2" in result.stderr and "HF_HUB_OFFLINE" in result.stderr and "not in the cache" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_hub_id_in_the_cache_imports_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    assert invoke("export", "hf", saved_model(tmp_path / "src"), tmp_path / "hf").exit_code == 0
    repo = tmp_path / "hub" / "models--someone--tiny"
    shutil.copytree(tmp_path / "hf", repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    # what HF_HOME and HF_HUB_OFFLINE=1 set when huggingface_hub is imported (here it already is)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    result = invoke("import", "hf", "someone/tiny", "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["source"] == "someone/tiny"
    meta = json.loads((tmp_path / "run" / "train_config.json").read_text())["meta"]
    assert meta["imported_from"] == "someone/tiny" and meta["hf_revision"] == COMMIT
    generated = invoke("generate", "--run", tmp_path / "run", "--prompt", "0 1", "--temperature", "0", "--json")
    assert generated.exit_code == 0, generated.output


def test_a_path_that_exists_wins_over_a_hub_id(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    assert invoke("export", "hf", saved_model(tmp_path / "src"), "gpt2").exit_code == 0
    result = invoke("import", "hf", "gpt2", "--out", "run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["source"] == str(tmp_path / "gpt2")
    (tmp_path / "empty").mkdir()
    refused = invoke("import", "hf", "empty", "--out", "run2")
    assert refused.exit_code == 2 and "empty has no config.json" in refused.stderr
