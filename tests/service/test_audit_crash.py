"""Crash test of the audit trail: ``replicant serve`` is SIGKILLed at random instants while an
operator pauses and resumes a stream as fast as it can; after each restart every mutating call
the client saw succeed has its audit entry (the entry is committed before the response leaves),
the entries' ids are strictly increasing, and the stream's paused state is the last audited
action's (or the unanswered in-flight call's)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from replicant.state.store import StateStore

from .access_env import make_env
from .serve_proc import ServeProcess


@pytest.mark.slow
def test_every_acknowledged_mutation_is_audited_across_kill_9(tmp_path: Path) -> None:
    env = make_env(tmp_path, prerun=False)
    rng = random.Random(20261206)
    acknowledged = 0
    for round_ in range(3):
        serve = ServeProcess(tmp_path, workers=0, token=env.tokens["operator"])
        serve.log_file = tmp_path / f"serve-{round_}.log"
        serve.start()
        stop = threading.Event()
        seen: list[int] = []
        attempted: list[str] = []

        def hammer(port: int = serve.port, stop: threading.Event = stop, seen: list[int] = seen,
                   attempted: list[str] = attempted) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                              headers={"authorization": f"Bearer {env.tokens['operator']}"}) as c:
                i = 0
                while not stop.is_set():
                    action = "pause" if i % 2 == 0 else "resume"
                    attempted.append(action)
                    try:
                        r = c.post(f"/api/v1/pipelines/solo/streams/orders/{action}")
                    except httpx.TransportError:
                        return  # killed
                    if r.status_code == 200:
                        seen.append(i)
                    i += 1

        worker = threading.Thread(target=hammer)
        worker.start()
        deadline = time.monotonic() + 30
        while len(seen) < 5 and time.monotonic() < deadline:  # at least a few calls in, then a random instant
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        assert serve.proc is not None
        os.killpg(serve.proc.pid, signal.SIGKILL)
        serve.proc.wait(timeout=30)
        stop.set()
        worker.join(timeout=30)
        serve.http.close()
        acknowledged += len(seen)
        assert len(seen) >= 5, serve.log()

        store = StateStore(env.state_url).open()
        try:
            entries = store.audit_entries()
            paused = [c for c in store.paused_controls("solo") if c["stream"] == "orders"]
        finally:
            store.close()
        ok = [e for e in entries if e["action"] in ("pause_stream", "resume_stream") and e["result"] == "ok"]
        assert len(ok) >= acknowledged, (len(ok), acknowledged)
        assert len(ok) <= acknowledged + round_ + 1  # at most the in-flight call of each kill went unanswered
        ids = [e["id"] for e in entries]
        assert ids == sorted(set(ids))
        assert all(e["actor"] == f"token:{env.ids['operator']} (operator)" for e in ok)
        # the state is the last audited action's, or the unanswered call's (killed between its
        # write and its audit entry: the one gap a non-transactional pair leaves)
        states = {ok[-1]["action"] == "pause_stream", attempted[-1] == "pause"}
        assert bool(paused) in states
