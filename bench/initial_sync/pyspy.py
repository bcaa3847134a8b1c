"""Profile a command with py-spy and summarise where its time went.

``wrapper()(cmd, log)`` turns a command into ``py-spy record --format raw --threads``
around it; ``summarize(path)`` reads the collapsed stacks (one ``frame;frame;… count``
per line) and reports, per thread, its share of the samples and the frames on top of
its stack (self time). py-spy drops idle samples by default, so shares are of the time
a thread was running (or blocked in a system call such as ``fsync``), not wall time.
Used by ``run.py --py-spy`` on extra, untimed replicant runs.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

_THREAD = re.compile(r"^thread \((?:0x)?[0-9A-Fa-f]+\)(?:: (?P<name>.*))?$")


def available() -> bool:
    return shutil.which("py-spy") is not None


def wrapper(native: bool = False, rate: int = 100):
    def wrap(cmd: list[str], log: Path) -> list[str]:
        extra = ["--native"] if native else []
        return ["py-spy", "record", "--format", "raw", "--rate", str(rate), "--subprocesses", "--threads",
                *extra, "-o", f"{log}.pyspy.txt", "--", *cmd]
    return wrap


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py:123)"
    if " (" in frame and frame.endswith(")"):
        fn, _, loc = frame.partition(" (")
        return f"{fn} ({Path(loc[:-1]).name})"
    return frame


def summarize(path: Path, top: int = 8) -> str:
    """A text report of the busiest threads and their top self frames in a py-spy raw file."""
    per_thread: dict[str, Counter[str]] = defaultdict(Counter)
    overall: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = "?"
        for f in frames[:3]:
            m = _THREAD.match(f)
            if m:
                thread = m["name"] or f
        leaf = _short(frames[-1])
        per_thread[thread][leaf] += n
        overall[leaf] += n
        total += n
    if not total:
        return f"(no samples in {path})"
    lines = [f"{path.name}: {total} samples (non-idle)", "  top self frames, all threads:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in overall.most_common(12)]
    for thread, frames in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
        t_total = sum(frames.values())
        if t_total < 0.02 * total:
            continue
        lines.append(f"  thread {thread}: {100 * t_total / total:.1f}% of samples; top self frames:")
        lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in frames.most_common(top)]
    return "\n".join(lines)
