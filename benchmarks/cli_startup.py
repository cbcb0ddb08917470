"""How long `tfkit --help` takes, against the interpreter starting and doing nothing.

    python benchmarks/cli_startup.py            # ~10 s

Runs `tfkit --help` (the console script of this interpreter's install) and
`python -c pass` alternately `--repeats` times each and prints the medians, the difference
(what tfkit's imports and the help text cost) and the target: `tfkit --help` under 0.3 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    tfkit = [str(Path(sys.executable).parent / "tfkit"), "--help"]
    bare = [sys.executable, "-c", "pass"]
    seconds(tfkit)  # the first run writes the bytecode caches
    help_s, bare_s = [], []
    for _ in range(args.repeats):
        help_s.append(seconds(tfkit))
        bare_s.append(seconds(bare))
    h, b = statistics.median(help_s), statistics.median(bare_s)
    print(f"tfkit --help      {h * 1e3:7.1f} ms (median of {args.repeats}; min {min(help_s) * 1e3:.1f} ms)")
    print(f"python -c pass    {b * 1e3:7.1f} ms")
    print(
        f"tfkit's own part  {(h - b) * 1e3:7.1f} ms; "
        f"target: tfkit --help under 300 ms: {'met' if h < 0.3 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
