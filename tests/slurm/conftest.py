"""A real SLURM cluster for the tests in this folder: the one `SLURM_CONF` names, or `scripts/slurm-local`'s.

    eval "$(scripts/slurm-local start)"    # a one-node cluster on this machine (Debian, root)
    pytest -m slurm -n 0 tests/slurm

Without a cluster that answers, every test here is skipped, with the reason. The tests
submit real jobs with sbatch and cancel what they leave behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLURM_LOCAL = ROOT / "scripts" / "slurm-local"
TEST_LIMIT_S = 240  # a test still running after this is stopped (a job that never comes back)


@dataclass(frozen=True)
class Cluster:
    conf: str  # its slurm.conf
    cpus: int  # the CPUs of its (first) node
    gpus: int  # the GPUs (gres/gpu) of that node
    default: str  # the default partition
    preemptor: str | None  # a partition whose jobs requeue the default partition's, if any

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": self.conf}


def _run(args: list[str], conf: str, timeout: float = 20) -> str:
    return subprocess.run(
        args, env={**os.environ, "SLURM_CONF": conf}, capture_output=True, text=True, timeout=timeout, check=True
    ).stdout


def _find_conf() -> tuple[str | None, str]:
    """The slurm.conf of a cluster that answers, or None and why not."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return None, 'no SLURM commands on PATH (start one with: eval "$(scripts/slurm-local start)")'
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        status = subprocess.run([str(SLURM_LOCAL), "status"], capture_output=True, text=True, check=False)
        if status.returncode != 0:
            return None, 'SLURM_CONF is not set and scripts/slurm-local is down: eval "$(scripts/slurm-local start)"'
        conf = status.stdout.strip().removeprefix("export SLURM_CONF=")
    if not Path(conf).is_file():
        return None, f"SLURM_CONF names no file: {conf}"
    try:
        states = _run(["sinfo", "-h", "-N", "-o", "%T"], conf).split()
    except (subprocess.SubprocessError, OSError) as e:
        return None, f"the SLURM cluster of {conf} does not answer: {e}"
    if not any(state.rstrip("*") in ("idle", "mixed", "allocated") for state in states):
        return None, f"the SLURM cluster of {conf} has no node up: {states}"
    return conf, ""


def _partitions(conf: str) -> tuple[str, str | None]:
    """The default partition, and one of higher PriorityTier that preempts it by requeueing (or None)."""
    parts = []
    for line in _run(["scontrol", "show", "partition", "-o"], conf).splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        parts.append(fields)
    default = next((p for p in parts if p.get("Default") == "YES"), parts[0])
    tier = int(default.get("PriorityTier", "1"))
    higher = [p for p in parts if int(p.get("PriorityTier", "1")) > tier]
    preempt = _run(["scontrol", "show", "config"], conf)
    requeues = "preempt/partition_prio" in preempt and default.get("PreemptMode", "").upper().startswith("REQUEUE")
    return default["PartitionName"], higher[0]["PartitionName"] if higher and requeues else None


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    conf, why = _find_conf()
    if conf is None:
        pytest.skip(f"no SLURM cluster: {why}")
    node = _run(["sinfo", "-h", "-N", "-o", "%c %G"], conf).split()
    gres = node[1] if len(node) > 1 else ""
    gpus = next((int(part.split(":")[-1].split("(")[0]) for part in gres.split(",") if part.startswith("gpu")), 0)
    default, preemptor = _partitions(conf)
    return Cluster(conf=conf, cpus=int(node[0]), gpus=gpus, default=default, preemptor=preemptor)


@pytest.fixture
def slurm(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    """The cluster for one test: SLURM_CONF set, submitit's job states forgotten, its jobs cancelled at the end."""
    from submitit.slurm.slurm import SlurmJob

    monkeypatch.setenv("SLURM_CONF", cluster.conf)
    SlurmJob.watcher.clear()
    SlurmJob.watcher._registered = set()
    previous = signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(TEST_LIMIT_S)
    try:
        yield cluster
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        cancel_jobs_of(tmp_path, cluster.conf)


def _too_long(signum: int, frame: object) -> None:
    raise TimeoutError(f"the SLURM test ran past {TEST_LIMIT_S} s")


def job_ids(tmp_path: Path) -> list[str]:
    """The SLURM job ids this test submitted (`12`, or `12_3` for an array task), from submitit's folders."""
    ids = {p.name.removesuffix("_submitted.pkl") for p in tmp_path.glob("**/slurm/*_submitted.pkl")}
    return sorted(ids, key=lambda i: [int(x) for x in i.split("_")])


def cancel_jobs_of(tmp_path: Path, conf: str) -> None:
    """Cancel the jobs of a test that are still queued or running, and wait until they have left the node."""
    ids = sorted({i.split("_")[0] for i in job_ids(tmp_path)})
    if not ids:
        return
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        _run(["scancel", *ids], conf)
        deadline = time.time() + 60
        while time.time() < deadline and _run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], conf).strip():
            time.sleep(0.5)
