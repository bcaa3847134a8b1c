"""Profile a command with py-spy and summarise where its time went.

``wrap(cmd, log)`` turns a command into ``py-spy record --format raw`` around it;
``summarize(path)`` reads the collapsed stacks (one ``frame;frame;… count`` per line)
and returns the frames with the most samples on top of the stack (self) and anywhere
in it (inclusive), per process/thread root. Used by ``run.py --py-spy`` on extra,
untimed replicant runs.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path


def available() -> bool:
    return shutil.which("py-spy") is not None


def wrapper(native: bool = False, rate: int = 100):
    def wrap(cmd: list[str], log: Path) -> list[str]:
        extra = ["--native"] if native else []
        return ["py-spy", "record", "--format", "raw", "--rate", str(rate), "--subprocesses",
                *extra, "-o", f"{log}.pyspy.txt", "--", *cmd]
    return wrap


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py:123)"
    if "(" in frame and frame.endswith(")"):
        fn, _, loc = frame.partition(" (")
        return f"{fn} ({Path(loc[:-1]).name})"
    return frame


def summarize(path: Path, top: int = 20) -> str:
    """A text report of the top self and inclusive frames in a py-spy raw file."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        total += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return f"(no samples in {path})"
    lines = [f"{path.name}: {total} samples", "  self:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in self_c.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)
