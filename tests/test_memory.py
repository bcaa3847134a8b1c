"""Arrow's memory pool for a replicant process (replicant/memory.py) and the peak RSS of a files
load it bounds (issue 13: ≤ 256 MB; bench/files has the 5M-row figures)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _has_jemalloc() -> bool:
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        return False
    return True


def _pool(env: dict[str, str], code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not _has_jemalloc(), reason="this pyarrow build has no jemalloc")
def test_importing_replicant_first_chooses_jemalloc_unless_the_environment_does() -> None:
    probe = "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    assert _pool({}, "import replicant; " + probe) == "jemalloc"
    assert _pool({"ARROW_DEFAULT_MEMORY_POOL": "system"}, "import replicant; " + probe) == "system"
    assert _pool({}, "import pyarrow, replicant; " + probe) == "mimalloc"  # too late to choose: left alone
    # the CLI's start returns jemalloc's freed pages within memory.DECAY_MS
    assert _pool({}, "import replicant.memory as m; print(m.configure())") == "jemalloc"


def _csv(path: Path, rows: int) -> None:
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    ids = np.arange(1, rows + 1)
    pcsv.write_csv(pa.table({"id": ids, "name": pc.binary_join_element_wise("customer ", pa.array(ids).cast(pa.string()), ""),
                             "amount": ids * 0.25, "note": pa.array(np.where(ids % 10 == 0, "late, paid twice", "ok"))}), path)


@pytest.mark.slow
def test_a_large_csv_into_duckdb_peaks_under_256_mb(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    _csv(tmp_path / "in" / "orders.csv", 3_000_000)
    (tmp_path / "p.yml").write_text(
        "pipeline: mem\nsource:\n  type: files\n  url: in\n  streams:\n"
        "    - {name: orders, glob: orders.csv, primary_key: [id], exclude: [_file, _line]}\n"
        "destinations:\n  - {name: wh, type: duckdb, path: wh.duckdb}\n")
    proc = subprocess.Popen([sys.executable, "-m", "replicant.cli", "run", "p.yml"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={"PYTHONPATH": str(ROOT / "src"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    ps, peak = psutil.Process(proc.pid), 0
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.05)  # sampling the child's RSS, not waiting for it
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    import duckdb

    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as c:
        assert c.execute("SELECT count(*), sum(id) FROM orders").fetchone() == (3_000_000, 3_000_000 * 3_000_001 // 2)
    assert peak <= 256 * 2**20, f"peak RSS {peak / 2**20:.0f} MB"
