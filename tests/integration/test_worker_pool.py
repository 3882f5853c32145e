"""Stage worker processes over pipes (engine/pipeline/workers.py, worker_main.py): real processes."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.messages import adt_a01_with_in1, synthetic_patient
from engine.pipeline.workers import ChannelSpec, StageOutcome, WireMessage, WorkerPool
from engine.types import TransientError

SPEC = ChannelSpec(
    channel="adt", version="v1", stages=(("v2_to_fhir", {"type": "v2_to_fhir", "fhir_version": "R4B"}),),
    config_dir=str(Path.cwd()),
)


def chunk(first_id: int, count: int) -> list[WireMessage]:
    return [
        (first_id + n, "adt", adt_a01_with_in1(synthetic_patient(first_id + n)).encode("ascii"), time.time(),
         "utf-8", "v1")
        for n in range(count)
    ]


def bundle_ids(outcomes: list[StageOutcome]) -> list[str]:
    assert all(o.output_json is not None for o in outcomes)
    return [json.loads(o.output_json or b"")["id"] for o in outcomes]


def nice_of(pid: int) -> int:
    # /proc/<pid>/stat: field 19 is the nice value (after the parenthesised command name).
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[16])


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    workers = WorkerPool(1, nice=5)
    await workers.start()
    yield workers
    await workers.close(timeout_s=5)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


async def until_busy(pid: int, timeout_s: float = 30.0) -> None:
    """Poll (no event exists for another process's CPU use) until `pid` is working on a chunk."""
    start = cpu_ticks(pid)
    deadline = time.monotonic() + timeout_s
    while cpu_ticks(pid) < start + 5:  # 5 clock ticks of CPU: it has read the chunk and is mapping
        assert time.monotonic() < deadline, "the worker never started on the chunk"
        await asyncio.sleep(0.01)


def worker_pids(pool: WorkerPool) -> list[int]:
    return [w.process.pid for w in pool._all]


class TestWorkerPool:
    async def test_a_chunk_comes_back_mapped_in_order(self, pool: WorkerPool) -> None:
        """Each message of a chunk comes back as its own Bundle (Bundle.id names the message), in order."""
        outcomes = await pool.submit(SPEC, chunk(100, 5))
        assert [f"adt-{n}" for n in range(100, 105)] == bundle_ids(outcomes)
        assert all(o.error is None and o.output is None for o in outcomes)  # only the JSON crosses over

    async def test_workers_run_niced(self, pool: WorkerPool) -> None:
        """Workers give the CPU to the listener first: their niceness is raised by `nice`."""
        (pid,) = worker_pids(pool)
        assert nice_of(pid) == nice_of(os.getpid()) + 5

    async def test_a_killed_worker_fails_its_chunk_transiently_and_is_replaced(self, pool: WorkerPool) -> None:
        """SIGKILL mid-chunk: that chunk raises TransientError (the runner retries); the next one works."""
        (pid,) = worker_pids(pool)
        call = asyncio.ensure_future(pool.submit(SPEC, chunk(1, 400)))
        await until_busy(pid)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(TransientError):
            await asyncio.wait_for(call, 30)
        outcomes = await asyncio.wait_for(pool.submit(SPEC, chunk(500, 2)), 60)
        assert ["adt-500", "adt-501"] == bundle_ids(outcomes)
        assert [pid] != worker_pids(pool)

    async def test_a_cancelled_call_never_hands_its_reply_to_the_next_caller(self, pool: WorkerPool) -> None:
        """Cancelled mid-call, the worker is replaced: the next caller gets its own messages back."""
        (pid,) = worker_pids(pool)
        call = asyncio.ensure_future(pool.submit(SPEC, chunk(1, 400)))
        await until_busy(pid)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        outcomes = await asyncio.wait_for(pool.submit(SPEC, chunk(900, 3)), 60)
        assert ["adt-900", "adt-901", "adt-902"] == bundle_ids(outcomes)
        assert pid not in worker_pids(pool)

    async def test_close_ends_every_worker(self) -> None:
        """close() closes the workers' input; they exit by themselves, nothing is left running."""
        workers = WorkerPool(2)
        await workers.start()
        processes = [w.process for w in workers._all]
        await workers.close(timeout_s=10)
        assert [0, 0] == [p.returncode for p in processes]


class TestWorkerProcess:
    def test_exits_when_the_engine_side_of_the_pipe_closes(self) -> None:
        """End of input (the engine exited or was SIGKILLed) ends the worker, with no watcher thread."""
        worker = subprocess.Popen(
            [sys.executable, "-m", "engine.pipeline.worker_main"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        try:
            assert worker.stdout is not None and worker.stdin is not None
            header = worker.stdout.read(8)  # the ready frame: the worker is up
            assert 8 == len(header)
            worker.stdin.close()
            assert 0 == worker.wait(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    def test_stray_prints_do_not_reach_the_protocol_pipe(self) -> None:
        """After start-up fd 1 is stderr: a library printing cannot corrupt the replies."""
        code = (
            "import os, sys\n"
            "from engine.pipeline import worker_main as w\n"
            "requests, replies = w._protocol_streams()\n"
            "print('stray output from a library', flush=True)\n"
            "replies.write(w.encode(('ok', 42)))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=True)
        assert b"stray output" in done.stderr
        assert b"stray output" not in done.stdout
        assert ("ok", 42) == pickle.loads(done.stdout[8:])


class TestPriming:
    def test_the_prime_message_maps_and_validates_cleanly(self) -> None:
        """The warm-up message goes all the way through mapping and validation (so both warm up)."""
        from engine.pipeline.workers import PRIME_MESSAGE, work_chunk

        (outcome,) = work_chunk(SPEC, [(0, "adt", PRIME_MESSAGE, time.time(), "ascii", "v1")])
        assert outcome.error is None
        resources = {e["resource"]["resourceType"] for e in json.loads(outcome.output_json or b"")["entry"]}
        assert {"Patient", "Encounter", "Coverage"} <= resources

    async def test_prime_reaches_every_worker(self) -> None:
        """prime() sends one warm-up per worker, and every worker comes back healthy."""
        from engine.pipeline.workers import PoolExecutor

        workers = WorkerPool(2)
        await workers.start()
        try:
            served: list[int] = []
            original = workers.submit

            async def counting(spec: ChannelSpec, chunk: list[WireMessage]) -> list[StageOutcome]:
                served.append(len(chunk))
                return await original(spec, chunk)

            workers.submit = counting  # type: ignore[method-assign]
            await asyncio.wait_for(PoolExecutor(workers, SPEC).prime(), 120)
            assert [1, 1] == served
            assert 2 == workers._idle.qsize()  # both came back healthy
        finally:
            await workers.close(timeout_s=5)
