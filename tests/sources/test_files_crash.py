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
    peaks: list[float] = []  # each run's own peak RSS (MB): VmHWM of its process image, read while it runs
    # (wait4's ru_maxrss cannot be used: a child inherits the high-water mark of this pytest worker,
    # which it was forked from, so it grew with whatever the worker ran before)
    for _ in range(KILLS):
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + rng.uniform(3, 12)
        peak = 0.0
        while time.monotonic() < deadline and proc.poll() is None:
            peak = max(peak, _hwm_mb(proc.pid))
            time.sleep(0.05)
        if proc.poll() is None:
            peak = max(peak, _hwm_mb(proc.pid))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        peaks.append(peak)
        offsets.append(_position(tmp_path))
    with open(tmp_path / "last.out", "wb") as out:
        last = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = 0.0
        while last.poll() is None:
            peak = max(peak, _hwm_mb(last.pid))
            time.sleep(0.05)
        peaks.append(peak)
    output = (tmp_path / "last.out").read_text(errors="replace")
    assert last.returncode == 0, output
    peak_mb = max(peaks)
    print(f"\nfiles crash test: {rows:,} rows ({big.stat().st_size / 2**20:,.0f} MB), positions after kills "
          f"{offsets}, peak RSS of the runs {peak_mb:,.0f} MB")
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        count, lines, ids, total = con.execute("SELECT count(*), count(DISTINCT _line), count(DISTINCT id), sum(id) "
                                           "FROM big").fetchone()
    assert (count, lines, ids, total) == (rows, rows, rows, rows * (rows + 1) // 2)
    assert any(0 < o < big.stat().st_size for o in offsets), f"no kill landed inside the file: {offsets}"
    # Bounded, not proportional to the file: a run alone peaks near 270 MB (VmHWM, 2026-12-06).
    size_mb = big.stat().st_size / 2**20
    assert 0 < peak_mb < 0.4 * size_mb, f"peak RSS {peak_mb:.0f} MB for a {size_mb:.0f} MB file: not read in bounded memory"


def _position(tmp_path: Path) -> int:
    """The byte offset of the last chunk durable in the log (0: none yet)."""
    from replicant.log import open_log

    lg = open_log(str(tmp_path / ".replicant" / "big" / "log"), read_only=True)
    try:
        pos = lg.last_position("big") or {}
    finally:
        lg.close()
    return int(pos.get("offset", 0))


def _hwm_mb(pid: int) -> float:
    """The process's peak RSS so far in MB (``VmHWM``), 0 once it has ended."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")), 0.0)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
