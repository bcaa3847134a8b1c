"""Crash test of the files source: a generated CSV of about 1 GB (``REPLICANT_FILES_CRASH_MB``
to change it) is loaded by ``replicant run`` processes SIGKILLed at random instants inside the
file; the last run completes. The destination (``write: append``, so a row read twice would
show twice) then holds every line exactly once, and the peak RSS of the runs is printed (and
bounded: the file is read in chunks, not whole).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pytest

pytestmark = pytest.mark.slow

KILLS = 3
_ROWS_PER_MB = 22_600  # about 46 bytes a row


def _generate(path: Path, rows: int) -> None:
    """``id,name,amount,note`` rows, written by Arrow in slices (bounded memory)."""
    step = 1_000_000
    with pcsv.CSVWriter(path, pa.schema([("id", pa.int64()), ("name", pa.string()), ("amount", pa.float64()),
                                         ("note", pa.string())])) as w:
        for start in range(0, rows, step):
            ids = np.arange(start + 1, min(rows, start + step) + 1)
            names = pc.binary_join_element_wise("name-", pa.array(ids).cast(pa.string()), "")
            note = pa.array(np.where(ids % 1000 == 0, "with, a comma\nand a newline", "plain note"))
            w.write_table(pa.table({"id": ids, "name": names, "amount": ids * 0.25, "note": note}))


def test_kill_9_inside_a_large_csv_resumes_inside_it_without_duplicates(tmp_path: Path) -> None:
    megabytes = int(os.environ.get("REPLICANT_FILES_CRASH_MB", "1024"))
    rows = megabytes * _ROWS_PER_MB
    (tmp_path / "in").mkdir()
    big = tmp_path / "in" / "big.csv"
    _generate(big, rows)
    (tmp_path / "p.yml").write_text("""
pipeline: big
source:
  type: files
  url: in
  batch_size: 100000
  streams: [{name: big, glob: "*.csv", schema: {id: int64, amount: double}}]
destinations: [{name: wh, type: duckdb, path: wh.duckdb, write: append}]
""")
    cmd = [sys.executable, "-m", "replicant.cli", "run", "p.yml"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(20261206)
    offsets = []
    peaks: list[float] = []  # each run's own peak RSS (MB), from wait4: RUSAGE_CHILDREN would also count
    # every other process this pytest worker ever waited for (servers, other tests' runs)
    for _ in range(KILLS):
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + rng.uniform(3, 12)
        ended: float | None = None
        while time.monotonic() < deadline and ended is None:
            ended = _reap(proc, block=False)  # not poll(): it would reap the child and lose its rusage
            time.sleep(0.1)
        if ended is None:
            proc.send_signal(signal.SIGKILL)
            ended = _reap(proc)
        peaks.append(ended or 0.0)
        offsets.append(_position(tmp_path))
    with subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as last:
        output = last.stdout.read() if last.stdout else ""
        peaks.append(_reap(last) or 0.0)
    assert last.returncode == 0, output
    peak_mb = max(peaks)
    print(f"\nfiles crash test: {rows:,} rows ({big.stat().st_size / 2**20:,.0f} MB), positions after kills "
          f"{offsets}, peak RSS of the runs {peak_mb:,.0f} MB")
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        count, lines, ids, total = con.execute("SELECT count(*), count(DISTINCT _line), count(DISTINCT id), sum(id) "
                                           "FROM big").fetchone()
    assert (count, lines, ids, total) == (rows, rows, rows, rows * (rows + 1) // 2)
    assert any(0 < o < big.stat().st_size for o in offsets), f"no kill landed inside the file: {offsets}"
    # Bounded, not proportional to the file: the peak stays well below the file's size. Run alone
    # the runs peak at about 400 MB; inside the full parallel suite they reached 711 MB (2026-12-06,
    # measured per run with wait4), a difference not explained yet (issue 13 keeps it open).
    size_mb = big.stat().st_size / 2**20
    assert peak_mb < 0.8 * size_mb, f"peak RSS {peak_mb:.0f} MB for a {size_mb:.0f} MB file: not read in bounded memory"


def _position(tmp_path: Path) -> int:
    """The byte offset of the last chunk durable in the log (0: none yet)."""
    from replicant.log import open_log

    lg = open_log(str(tmp_path / ".replicant" / "big" / "log"), read_only=True)
    try:
        pos = lg.last_position("big") or {}
    finally:
        lg.close()
    return int(pos.get("offset", 0))


def _reap(proc: subprocess.Popen, *, block: bool = True) -> float | None:
    """Waits for ``proc`` (or, without ``block``, checks whether it ended) and returns its own
    peak RSS in MB from ``wait4``'s rusage of that child; None while it still runs."""
    pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024
