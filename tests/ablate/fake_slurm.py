"""A fake SLURM for tests: sbatch, srun, sacct, squeue, scancel and scontrol on one machine.

    python fake_slurm.py sbatch SCRIPT          (and srun ..., sacct ..., scancel ..., scontrol requeue ID)

Each command is a small shell wrapper on PATH that calls this file (see `install`). State
lives in $FAKE_SLURM_DIR: the submitted scripts, one state file per job (or array task),
and the pid of each task's srun. `sbatch` starts a detached runner that runs the job's
tasks (`--array=0-N%P`: at most P at once) with the SLURM_* environment a real job has;
a task asked to requeue (`scontrol requeue`) runs again once it exits. `scancel` cancels
pending tasks and sends SIGTERM (or `--signal`) to running ones, through their srun,
which forwards it to the command it runs, as SLURM does for a job step.
Only the standard library: the wrappers may run under any python3.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "squeue", "scancel", "scontrol")
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "PREEMPTED")


def state_dir() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def install(bin_dir: Path, state: Path) -> None:
    """Write the command wrappers into `bin_dir` (put it first on PATH, set FAKE_SLURM_DIR=state)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).absolute()}" {name} "$@"\n')
        path.chmod(0o755)


def read_state(key: str) -> str:
    try:
        return (state_dir() / f"{key}.state").read_text().strip()
    except OSError:
        return ""


def write_state(key: str, value: str) -> None:
    path = state_dir() / f"{key}.state"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value)
    os.replace(tmp, path)


def task_keys(job_id: str) -> list[str]:
    """The state keys of a job id: `12` (every task of job 12) or `12_3` (one array task)."""
    main = job_id.split("_")[0]
    keys = sorted(p.name[: -len(".state")] for p in state_dir().glob(f"{main}*.state"))
    keys = [k for k in keys if k == main or k.startswith(f"{main}_")]
    return [k for k in keys if k == job_id] if "_" in job_id else keys


def sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    text = script.read_text()
    options = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, flags=re.M))
    with open(state_dir() / "counter.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counter = state_dir() / "counter"
        job_id = int(counter.read_text()) + 1 if counter.exists() else 100
        counter.write_text(str(job_id))
    (state_dir() / f"{job_id}.sh").write_text(text)
    array = options.get("array")
    if array:
        match = re.fullmatch(r"0-(\d+)(?:%(\d+))?", array)
        assert match, array
        count, parallel = int(match.group(1)) + 1, int(match.group(2) or 10**6)
        keys = [f"{job_id}_{k}" for k in range(count)]
    else:
        keys, parallel = [str(job_id)], 1
    for key in keys:
        write_state(key, "PENDING")
    log = open(state_dir() / f"{job_id}.runner.log", "a")  # noqa: SIM115  (the runner's, it outlives this call)
    runner = subprocess.Popen(
        [sys.executable, __file__, "_run", str(job_id), str(parallel), os.getcwd(), *keys],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    (state_dir() / f"{job_id}.runner.pid").write_text(str(runner.pid))  # its process group: the job's processes
    print(f"Submitted batch job {job_id}")
    return 0


def run(args: list[str]) -> int:
    """The runner of one submitted job: its tasks, at most `parallel` at once, requeued when asked."""
    job_id, parallel, cwd, *keys = args
    script = state_dir() / f"{job_id}.sh"
    text = script.read_text()
    per_node = re.search(r"^#SBATCH --ntasks-per-node=(\d+)$", text, flags=re.M)
    nodes = re.search(r"^#SBATCH --nodes=(\d+)$", text, flags=re.M)
    ntasks = (int(per_node.group(1)) if per_node else 1) * (int(nodes.group(1)) if nodes else 1)
    pending = list(keys)
    running: dict[str, subprocess.Popen] = {}
    while pending or running:
        while pending and len(running) < int(parallel):
            key = pending.pop(0)
            if read_state(key) == "CANCELLED":
                continue
            running[key] = start_task(key, job_id, script, cwd, ntasks)
        for key, proc in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[key]
            flag = state_dir() / f"{key}.requeue"
            if flag.exists() and read_state(key) != "CANCELLED":
                flag.unlink()
                write_state(key, "PENDING")
                pending.insert(0, key)
            elif read_state(key) not in ("CANCELLED", "PREEMPTED"):
                write_state(key, "COMPLETED" if code == 0 else "FAILED")
        time.sleep(0.05)
    return 0


def start_task(key: str, job_id: str, script: Path, cwd: str, ntasks: int) -> subprocess.Popen:
    array_task = key.split("_")[1] if "_" in key else None
    env = {
        **os.environ,
        "SLURM_JOB_ID": str(int(job_id) * 1000 + int(array_task)) if array_task else job_id,
        "SLURM_NTASKS": str(ntasks),
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_SUBMIT_DIR": cwd,
        "FAKE_SLURM_KEY": key,
        "MASTER_PORT": str(free_port()),  # a job's DDP rendezvous (real jobs pick one from their id)
    }
    if array_task is not None:
        env.update(SLURM_ARRAY_JOB_ID=job_id, SLURM_ARRAY_TASK_ID=array_task)
    write_state(key, "RUNNING")
    with open(state_dir() / f"{key}.batch.log", "a") as log:
        return subprocess.Popen(["bash", str(script)], cwd=cwd, env=env, stdout=log, stderr=log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def expand(pattern: str, task: int) -> str:
    """srun's filename patterns: %j job id, %A array job id, %a array task id, %t task rank."""
    values = {
        "j": os.environ.get("SLURM_JOB_ID", ""),
        "A": os.environ.get("SLURM_ARRAY_JOB_ID", ""),
        "a": os.environ.get("SLURM_ARRAY_TASK_ID", ""),
        "t": str(task),
    }
    return re.sub(r"%([jAat])", lambda m: values[m.group(1)], pattern)


def srun(args: list[str]) -> int:
    """The job's tasks (SLURM_NTASKS of them, one node), each with its SLURM_PROCID; signals go to all."""
    output = error = None
    i = 0
    while i < len(args) and args[i].startswith("-"):
        flag = args[i]
        if flag in ("--output", "-o", "--error", "-e"):
            if flag in ("--output", "-o"):
                output = args[i + 1]
            else:
                error = args[i + 1]
            i += 2
        else:
            i += 1
    command = args[i:]
    procs = []
    for task in range(int(os.environ.get("SLURM_NTASKS", "1"))):
        out = open(expand(output, task), "a") if output else None  # noqa: SIM115  (held by the task)
        err = open(expand(error, task), "a") if error else out  # noqa: SIM115
        env = {**os.environ, "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task)}
        procs.append(subprocess.Popen(command, stdout=out, stderr=err, env=env))
    key = os.environ.get("FAKE_SLURM_KEY", "")
    (state_dir() / f"{key}.srun.pid").write_text(str(os.getpid()))

    def forward(signum: int, frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT):
        signal.signal(sig, forward)
    codes = [proc.wait() for proc in procs]
    code = next((c for c in codes if c != 0), 0)
    return code if code >= 0 else 128 - code


def sacct(args: list[str]) -> int:
    ids = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for job_id in ids:
        for key in task_keys(job_id):
            print(f"{key}|{read_state(key)}|localhost")
            print(f"{key}.batch|{read_state(key)}|localhost")
    return 0


def squeue(args: list[str]) -> int:
    print("JOBID STATE")
    for path in sorted(state_dir().glob("*.state")):
        state = path.read_text().strip()
        if state not in FINAL:
            print(f"{path.name[: -len('.state')]} {state}")
    return 0


def scancel(args: list[str]) -> int:
    signum = None
    ids = []
    i = 0
    while i < len(args):
        if args[i] in ("--signal", "-s"):
            name = args[i + 1].upper()
            signum = getattr(signal, name if name.startswith("SIG") else f"SIG{name}")
            i += 2
        elif args[i].startswith("--signal="):
            name = args[i].split("=", 1)[1].upper()
            signum = getattr(signal, name if name.startswith("SIG") else f"SIG{name}")
            i += 1
        else:
            ids.append(args[i])
            i += 1
    for job_id in ids:
        for key in task_keys(job_id):
            state = read_state(key)
            if state in FINAL:
                continue
            if signum is None:
                write_state(key, "CANCELLED")
            if state == "RUNNING":
                send(key, signum or signal.SIGTERM)
    return 0


def send(key: str, signum: int) -> None:
    pid_file = state_dir() / f"{key}.srun.pid"
    for _ in range(100):  # the task may not have started its srun yet
        if pid_file.exists():
            break
        time.sleep(0.05)
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pid_file.read_text()), signum)


def _preempt(args: list[str]) -> int:
    """Not a SLURM command: preempt running tasks as PreemptMode=CANCEL does (SIGTERM, then PREEMPTED for good)."""
    for job_id in args:
        for key in task_keys(job_id):
            if read_state(key) == "RUNNING":
                write_state(key, "PREEMPTED")
                send(key, signal.SIGTERM)
    return 0


def scontrol(args: list[str]) -> int:
    if args[:1] != ["requeue"]:
        print(f"fake scontrol: unsupported {args}", file=sys.stderr)
        return 1
    for job_id in args[1:]:
        for key in task_keys(job_id):
            (state_dir() / f"{key}.requeue").touch()
    return 0


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "_run":
        return run(args)
    return globals()[command](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
