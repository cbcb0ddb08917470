"""Put on PYTHONPATH by the resume tests: kill -9 this process at a chosen file event of a checkpoint save.

`TFKIT_KILL_AT=<tokens>:<n>` counts the file events of saving `checkpoints/<tokens>.pt` (temp
file created, data synced, renamed into place; the same for its `.sha256` digest; folder
synced; then temp file, sync, rename and folder sync for the `latest` pointer: 11 in all)
and sends SIGKILL to the process right after the n-th. The
hooks wrap `tempfile.mkstemp`, `os.fsync` and `os.replace`, which the save calls at run time.
"""

import os
import signal
import tempfile

_spec = os.environ.get("TFKIT_KILL_AT")
if _spec:
    _tokens, _n = _spec.split(":")
    _state = {"active": False, "count": 0}
    _mkstemp, _fsync, _replace = tempfile.mkstemp, os.fsync, os.replace

    def _event() -> None:
        if _state["active"]:
            _state["count"] += 1
            if _state["count"] >= int(_n):
                os.kill(os.getpid(), signal.SIGKILL)

    def mkstemp(*args, **kwargs):
        if kwargs.get("prefix") == f".{_tokens}.pt.":
            _state["active"] = True
        result = _mkstemp(*args, **kwargs)
        _event()
        return result

    def fsync(fd):
        _fsync(fd)
        _event()

    def replace(src, dst, *args, **kwargs):
        _replace(src, dst, *args, **kwargs)
        _event()

    tempfile.mkstemp, os.fsync, os.replace = mkstemp, fsync, replace

# `TFKIT_SKIP_RNG=torch`: resume without restoring torch's RNG (the negative control of the resume tests)
if os.environ.get("TFKIT_SKIP_RNG") == "torch":
    import tfkit.training.checkpoint as _checkpoint

    _set_rng_state = _checkpoint.set_rng_state

    def _set_rng_state_but_torch(state):
        import torch

        kept = torch.get_rng_state()
        _set_rng_state(state)
        torch.set_rng_state(kept)

    _checkpoint.set_rng_state = _set_rng_state_but_torch
