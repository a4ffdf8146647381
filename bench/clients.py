"""How should a Celery worker process drive its HTTP requests to the upstream?

Run: ``python -m bench.clients [--quick] [--no-uvloop]``.

Starts the mock upstream (``batchq.local.mock_upstream``) as a subprocess, then, for each mode,
sends R requests with concurrency C the way Celery's ``threads`` pool runs line tasks: C
threads, each calling a synchronous ``send()`` in a loop. It measures, in this process
only (the mock's CPU is not counted): requests/s, CPU-ms per request
(``time.process_time``, all threads) and the mock's ``peak_in_flight``.

Modes:

* ``sync-shared``: one ``httpx2.Client`` shared by all threads.
* ``sync-per-thread``: one ``httpx2.Client`` per thread.
* ``loop-httpx2``: one asyncio loop in a daemon thread with one ``httpx2.AsyncClient``;
  threads hand requests over with ``run_coroutine_threadsafe`` (batchq's current design).
* ``loop-aiohttp-transport``: the same, the ``AsyncClient`` on an aiohttp transport
  (``batchq/execution/aiohttp_transport.py``).
* ``loop-aiohttp-raw``: the same loop, plain ``aiohttp.ClientSession.post``.
* ``gevent``: a subprocess, monkey-patched first, ``gevent.pool.Pool(C)`` greenlets
  (one per request, as Celery's gevent pool spawns them) and one sync ``httpx2.Client``.
* ``gevent-client-pool``: the same, each greenlet checking out one of C single-connection
  ``httpx2.Client``s (the greenlet analogue of ``sync-per-thread``).
* ``asyncio-aiohttp``: the baseline, a plain asyncio program (one aiohttp session, a
  semaphore of C, R tasks), no threads.

``+uvloop`` rows repeat the loop modes and the baseline on a uvloop event loop.

Each mode first warms up (one request per thread, so pools are full), then the mock's
counters are reset and the measured run starts. A run stops handing out requests after
``--budget`` seconds (20 by default); the ``sent`` column then shows fewer than R.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import itertools
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

import aiohttp
import httpx2
import orjson

from batchq.execution.aiohttp_transport import AiohttpTransport

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]

ROOT = Path(__file__).resolve().parents[1]
PATH = "/v1/chat/completions"
TIMEOUT_S = 30.0
KEEPALIVE_S = 30.0
BUDGET_S = 20.0  # a measured run stops handing out requests after this long
GEVENT_MODES = ("gevent", "gevent-client-pool")
GEVENT_BOOTSTRAP = (
    "from gevent import monkey; monkey.patch_all()\nimport sys; from bench.clients import main; main(sys.argv[1:])\n"
)
_HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
_BODY = {
    "model": "mock-model",
    "messages": [{"role": "user", "content": "Summarise in one sentence why batching requests lowers cost per token."}],
    "max_tokens": 32,
}
PAYLOAD = orjson.dumps(_BODY)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    latency_ms: float
    concurrency: int
    requests: int
    budget_s: float = BUDGET_S


@dataclasses.dataclass(frozen=True)
class Run:
    """One measured run: wall and CPU seconds of this process, requests sent and failed."""

    elapsed: float
    cpu: float
    done: int
    errors: int
    other: float  # CPU cores busy in unrelated processes meanwhile (0 on a quiet machine)


@dataclasses.dataclass(frozen=True)
class Result:
    mode: str
    requests: int
    run: Run
    peak_in_flight: int
    served: int

    @property
    def rps(self) -> float:
        return self.run.done / self.run.elapsed

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.run.cpu / self.run.done


def _check(status: int, content: bytes) -> None:
    """What every mode does with an answer: check the status and decode the JSON body."""
    if status != 200:
        raise RuntimeError(f"upstream answered {status}")
    orjson.loads(content)


def _limits(concurrency: int) -> httpx2.Limits:
    return httpx2.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=KEEPALIVE_S
    )


def _session(concurrency: int) -> aiohttp.ClientSession:
    """An aiohttp session with a keep-alive pool of ``concurrency`` (call on the loop)."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, keepalive_timeout=KEEPALIVE_S)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))


# --------------------------------------------------------------------------- #
# Senders: a blocking ``send()`` callable from any thread, and ``close()``
# --------------------------------------------------------------------------- #


class Sender(Protocol):
    def send(self) -> None: ...
    def close(self) -> None: ...


class SyncShared:
    """One ``httpx2.Client`` for every thread."""

    def __init__(self, url: str, concurrency: int) -> None:
        self._url = url
        self._client = httpx2.Client(timeout=TIMEOUT_S, limits=_limits(concurrency))

    def send(self) -> None:
        response = self._client.post(self._url, content=PAYLOAD, headers=_HEADERS)
        _check(response.status_code, response.content)

    def close(self) -> None:
        self._client.close()


class SyncPerThread:
    """One ``httpx2.Client`` per calling thread."""

    def __init__(self, url: str, concurrency: int) -> None:
        self._url = url
        self._local = threading.local()
        self._clients: list[httpx2.Client] = []
        self._lock = threading.Lock()

    def _client(self) -> httpx2.Client:
        client: httpx2.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx2.Client(timeout=TIMEOUT_S, limits=_limits(1))
            with self._lock:
                self._clients.append(client)
        return client

    def send(self) -> None:
        response = self._client().post(self._url, content=PAYLOAD, headers=_HEADERS)
        _check(response.status_code, response.content)

    def close(self) -> None:
        for client in self._clients:
            client.close()


class AsyncSender(Protocol):
    """A sender that lives on an event loop."""

    async def send(self) -> None: ...
    async def close(self) -> None: ...


class Httpx2Async:
    """One ``httpx2.AsyncClient`` (on httpx2's own transport, or aiohttp's)."""

    def __init__(self, url: str, concurrency: int, aiohttp_transport: bool) -> None:
        self._url = url
        transport = AiohttpTransport(_session(concurrency)) if aiohttp_transport else None
        self._client = httpx2.AsyncClient(timeout=TIMEOUT_S, limits=_limits(concurrency), transport=transport)

    async def send(self) -> None:
        response = await self._client.post(self._url, content=PAYLOAD, headers=_HEADERS)
        _check(response.status_code, response.content)

    async def close(self) -> None:
        await self._client.aclose()


class AiohttpRaw:
    """One ``aiohttp.ClientSession``, no httpx layer."""

    def __init__(self, url: str, concurrency: int) -> None:
        self._url = url
        self._session = _session(concurrency)

    async def send(self) -> None:
        async with self._session.post(self._url, data=PAYLOAD, headers=_HEADERS) as response:
            _check(response.status, await response.read())

    async def close(self) -> None:
        await self._session.close()


async def _make(factory: Callable[[], AsyncSender]) -> AsyncSender:
    return factory()  # built on the loop: aiohttp sessions want a running loop


class LoopThread:
    """An asyncio loop in a daemon thread; ``run`` blocks the calling thread until done."""

    def __init__(self, loop_factory: LoopFactory) -> None:
        self.loop = loop_factory()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bench-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


class OnLoop:
    """Threads hand ``AsyncSender.send`` to one loop thread (batchq's worker design)."""

    def __init__(self, factory: Callable[[], AsyncSender], loop_factory: LoopFactory) -> None:
        self._loop = LoopThread(loop_factory)
        self._sender = self._loop.run(_make(factory))

    def send(self) -> None:
        self._loop.run(self._sender.send())

    def close(self) -> None:
        try:
            self._loop.run(self._sender.close())
        finally:
            self._loop.close()


# --------------------------------------------------------------------------- #
# Drivers
# --------------------------------------------------------------------------- #


_HZ = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds all processes have used since boot (NaN without /proc)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / _HZ


def _process_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _HZ


@dataclasses.dataclass
class Meter:
    elapsed: float = 0.0
    cpu: float = 0.0  # this process, all threads
    other: float = 0.0  # cores used meanwhile by processes other than this one and the mock


@contextlib.contextmanager
def _measured(mock_pid: int) -> Iterator[Meter]:
    """Measure the block (after a GC; GC runs as usual inside it)."""
    gc.collect()
    meter = Meter()
    busy0, mock0 = _machine_busy_s(), _process_cpu_s(mock_pid)
    t0, c0 = time.perf_counter(), time.process_time()
    yield meter
    meter.elapsed, meter.cpu = time.perf_counter() - t0, time.process_time() - c0
    foreign = _machine_busy_s() - busy0 - (_process_cpu_s(mock_pid) - mock0) - meter.cpu
    meter.other = max(0.0, foreign) / meter.elapsed


class Crew:
    """``size`` threads that each call ``send()`` in a loop, like Celery's threads pool.

    The same threads serve every phase (so per-thread clients survive the warm-up).
    """

    def __init__(self, send: Callable[[], None], size: int) -> None:
        self._send = send
        self._start = threading.Barrier(size + 1)
        self._done = threading.Barrier(size + 1)
        self._counter: Iterator[int] = iter(())
        self._total = 0
        self._deadline = 0.0
        self._sent = 0
        self._errors = 0
        self._stopping = False
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"crew-{i}", daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):  # aborted: just end
            while True:
                self._start.wait()
                if self._stopping:
                    return
                self._serve()
                self._done.wait()

    def _serve(self) -> None:
        sent = errors = 0
        # itertools.count's next() is atomic under the GIL: each index goes to one thread.
        while next(self._counter) < self._total and time.perf_counter() < self._deadline:
            sent += 1
            try:
                self._send()
            except Exception:
                errors += 1
        with self._lock:
            self._sent += sent
            self._errors += errors

    def run(self, total: int, budget_s: float, mock_pid: int) -> Run:
        self._counter, self._total, self._sent, self._errors = itertools.count(), total, 0, 0
        self._deadline = time.perf_counter() + budget_s
        with _measured(mock_pid) as m:
            self._start.wait()
            self._done.wait()
        return Run(m.elapsed, m.cpu, self._sent, self._errors, m.other)

    def close(self) -> None:
        """End the threads (a running phase stops after the requests in flight)."""
        self._stopping, self._deadline = True, 0.0
        self._start.abort()  # idle threads wake with BrokenBarrierError and end
        self._done.abort()
        end = time.monotonic() + TIMEOUT_S
        for thread in self._threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))


class Mock:
    """The mock upstream subprocess, and its control endpoints."""

    def __init__(self, latency_ms: float) -> None:
        cmd = [sys.executable, "-m", "batchq.local.mock_upstream", "--port", "0", "--latency-ms", str(latency_ms)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            self.base = self._wait_ready()
        except BaseException:
            self.close()
            raise
        self.url = self.base + PATH
        self.pid = self.proc.pid
        self._control = httpx2.Client(timeout=10)

    def _wait_ready(self, timeout: float = 15) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise RuntimeError("mock upstream did not start")
        line = self.proc.stdout.readline()
        if "http://" not in line:
            raise RuntimeError(f"mock upstream did not start: {line!r}")
        return line[line.index("http://") :].strip()

    def reset(self) -> None:
        self._control.post(self.base + "/_reset").raise_for_status()

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._control.get(self.base + "/_stats").json()
        return stats

    def close(self) -> None:
        if hasattr(self, "_control"):
            self._control.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def threaded(make: Callable[[], Sender], case: Case, mock: Mock) -> Run:
    """Warm up (one request per thread), reset the mock's counters, measure R requests."""
    sender = make()
    crew = Crew(sender.send, case.concurrency)
    try:
        crew.run(case.concurrency, BUDGET_S, mock.pid)
        mock.reset()
        return crew.run(case.requests, case.budget_s, mock.pid)
    finally:
        crew.close()
        sender.close()


async def _gather(sender: AiohttpRaw, total: int, concurrency: int) -> int:
    """``total`` requests, ``concurrency`` at a time (semaphore); returns the failures."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with semaphore:
            await sender.send()

    results = await asyncio.gather(*(one() for _ in range(total)), return_exceptions=True)
    return sum(isinstance(r, BaseException) for r in results)


async def _baseline(url: str, case: Case, reset: Callable[[], None], mock_pid: int) -> Run:
    sender = AiohttpRaw(url, case.concurrency)
    try:
        await _gather(sender, case.concurrency, case.concurrency)
        await asyncio.to_thread(reset)
        with _measured(mock_pid) as m:
            errors = await _gather(sender, case.requests, case.concurrency)
        return Run(m.elapsed, m.cpu, case.requests, errors, m.other)
    finally:
        await sender.close()


def baseline(loop_factory: LoopFactory, case: Case, mock: Mock) -> Run:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_baseline(mock.url, case, mock.reset, mock.pid))


# --------------------------------------------------------------------------- #
# gevent (its own process: monkey-patching must come before any other import)
# --------------------------------------------------------------------------- #


class _GeventClients:
    """Sync ``httpx2.Client``s for greenlets: one shared, or a checkout pool of C (one per greenlet)."""

    def __init__(self, concurrency: int, per_greenlet: bool) -> None:
        import gevent.queue

        self._all = [
            httpx2.Client(timeout=TIMEOUT_S, limits=_limits(1 if per_greenlet else concurrency))
            for _ in range(concurrency if per_greenlet else 1)
        ]
        self._free: gevent.queue.Queue[httpx2.Client] | None = None
        if per_greenlet:
            self._free = gevent.queue.Queue()
            for client in self._all:
                self._free.put(client)

    @contextlib.contextmanager
    def client(self) -> Iterator[httpx2.Client]:
        if self._free is None:
            yield self._all[0]
            return
        client = self._free.get()
        try:
            yield client
        finally:
            self._free.put(client)

    def close(self) -> None:
        for client in self._all:
            client.close()


def gevent_child(args: argparse.Namespace) -> Run:
    """In the patched child: ``Pool(C)``, one greenlet spawned per request (as Celery's gevent pool does)."""
    import gevent.pool

    url, concurrency = args.url, args.concurrency
    clients = _GeventClients(concurrency, per_greenlet=args.mode == "gevent-client-pool")
    errors = 0

    def one() -> None:
        nonlocal errors
        try:
            with clients.client() as client:
                response = client.post(url, content=PAYLOAD, headers=_HEADERS)
            _check(response.status_code, response.content)
        except Exception:
            errors += 1

    def phase(total: int, budget_s: float) -> int:
        pool, deadline, sent = gevent.pool.Pool(concurrency), time.perf_counter() + budget_s, 0
        while sent < total and time.perf_counter() < deadline:
            pool.spawn(one)  # blocks while C greenlets are running
            sent += 1
        pool.join()
        return sent

    try:
        phase(concurrency, BUDGET_S)
        httpx2.post(args.base + "/_reset", timeout=10).raise_for_status()
        errors = 0
        with _measured(args.mock_pid) as m:
            sent = phase(args.requests, args.budget)
        return Run(m.elapsed, m.cpu, sent, errors, m.other)
    finally:
        clients.close()


def gevent_runner(mode: str) -> Callable[[Case, Mock], Run]:
    """Run ``mode`` (gevent, gevent-client-pool) in a child process that patches first."""

    def run(case: Case, mock: Mock) -> Run:
        args = ["--mode", mode, "--url", mock.url, "--base", mock.base, "--mock-pid", str(mock.pid)]
        args += ["--budget", str(case.budget_s)]
        args += ["--requests", str(case.requests), "--concurrency", str(case.concurrency)]
        cmd = [sys.executable, "-c", GEVENT_BOOTSTRAP, *args]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=case.budget_s + 60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{mode} child failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        data = orjson.loads(done.stdout.strip().splitlines()[-1])
        return Run(**data)

    return run


def _gevent_available() -> bool:
    try:
        import gevent  # noqa: F401
    except ImportError:
        return False
    return True


def _gevent_patched() -> bool:
    if "gevent.monkey" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("socket"))


# --------------------------------------------------------------------------- #
# Cases and report
# --------------------------------------------------------------------------- #

Mode = tuple[str, Callable[[Case, Mock], Run]]


def _loop_modes(tag: str, loop_factory: LoopFactory) -> list[Mode]:
    def on_loop(make: Callable[[str, int], AsyncSender]) -> Callable[[Case, Mock], Run]:
        def run(case: Case, mock: Mock) -> Run:
            def sender() -> Sender:
                return OnLoop(lambda: make(mock.url, case.concurrency), loop_factory)

            return threaded(sender, case, mock)

        return run

    return [
        ("loop-httpx2" + tag, on_loop(lambda url, c: Httpx2Async(url, c, aiohttp_transport=False))),
        ("loop-aiohttp-transport" + tag, on_loop(lambda url, c: Httpx2Async(url, c, aiohttp_transport=True))),
        ("loop-aiohttp-raw" + tag, on_loop(AiohttpRaw)),
    ]


def modes(uvloop: bool) -> list[Mode]:
    result: list[Mode] = [
        ("sync-shared", lambda case, mock: threaded(lambda: SyncShared(mock.url, case.concurrency), case, mock)),
        ("sync-per-thread", lambda case, mock: threaded(lambda: SyncPerThread(mock.url, case.concurrency), case, mock)),
        *_loop_modes("", asyncio.new_event_loop),
    ]
    if _gevent_available():
        result += [(name, gevent_runner(name)) for name in GEVENT_MODES]
    result.append(("asyncio-aiohttp", lambda case, mock: baseline(asyncio.new_event_loop, case, mock)))
    if uvloop:
        import uvloop as uv

        result += _loop_modes("+uvloop", uv.new_event_loop)
        result.append(("asyncio-aiohttp+uvloop", lambda case, mock: baseline(uv.new_event_loop, case, mock)))
    return result


def run_case(case: Case, chosen: list[Mode], repeat: int = 1) -> list[Result]:
    """Every mode, ``repeat`` rounds (interleaved); per mode, the round with the best req/s."""
    mock = Mock(case.latency_ms)
    best: dict[str, Result] = {}
    try:
        for round_ in range(1, repeat + 1):
            for name, fn in chosen:
                print(f"  {case.name} {name} #{round_} ...", end="", flush=True, file=sys.stderr)
                run = fn(case, mock)
                stats = mock.stats()
                result = Result(name, case.requests, run, int(stats["peak_in_flight"]), int(stats["requests"]))
                print(f" {result.rps:,.0f} req/s, {result.cpu_ms:.3f} CPU-ms/req", file=sys.stderr)
                if name not in best or result.rps > best[name].rps:
                    best[name] = result
    finally:
        mock.close()
    return [best[name] for name, _ in chosen if name in best]


def table(case: Case, results: Sequence[Result]) -> str:
    base = next((r.rps for r in results if r.mode == "asyncio-aiohttp"), float("nan"))
    limit = case.concurrency / (case.latency_ms / 1000) if case.latency_ms else None
    head = f"Case {case.name}: latency {case.latency_ms:g} ms, C={case.concurrency}, R={case.requests}"
    head += f" (physical limit C/latency = {limit:,.0f} req/s)" if limit else ""
    cols = f"{'mode':<30} {'req/s':>7} {'vs base':>7} {'CPU-ms/req':>10} {'peak_in_flight':>14} {'sent':>5}"
    cols += f" {'errors':>6} {'other':>5}"
    lines = [head, cols, "-" * len(cols)]
    for r in results:
        row = f"{r.mode:<30} {r.rps:>7,.0f} {r.rps / base:>6.2f}x {r.cpu_ms:>10.3f} {r.peak_in_flight:>14}"
        lines.append(f"{row} {r.run.done:>5} {r.run.errors + max(0, r.run.done - r.served):>6} {r.run.other:>5.2f}")
    lines.append("other: CPU cores taken meanwhile by other processes or hypervisor steal (near 0 when quiet)")
    if any(r.run.done < r.requests for r in results):
        lines.append(f"sent < R: the run was stopped after its {case.budget_s:g} s budget")
    return "\n".join(lines)


def cases(quick: bool, budget_s: float) -> list[Case]:
    shrink = 5 if quick else 1
    return [
        Case("(a)", latency_ms=0, concurrency=64, requests=5000 // shrink, budget_s=budget_s),
        Case("(b)", latency_ms=200, concurrency=128, requests=3000 // shrink, budget_s=budget_s),
    ]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="R / 5")
    parser.add_argument("--no-uvloop", action="store_true", help="skip the +uvloop rows")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per mode; the best req/s is kept")
    parser.add_argument("--only", help="comma-separated mode names")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds per measured run (default 20)")
    parser.add_argument("--mode", choices=GEVENT_MODES, help=argparse.SUPPRESS)  # the gevent child
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--mock-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # run the ``finally`` blocks (the mock is stopped)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    if args.mode is not None:
        if not _gevent_patched():  # run directly: re-exec so patching comes first
            os.execv(sys.executable, [sys.executable, "-c", GEVENT_BOOTSTRAP, *sys.argv[1:]])
        print(orjson.dumps(dataclasses.asdict(gevent_child(args))).decode())
        return
    signal.signal(signal.SIGTERM, _terminate)
    chosen = modes(uvloop=not args.no_uvloop)
    if args.only:
        wanted = set(args.only.split(","))
        chosen = [m for m in chosen if m[0] in wanted or m[0] == "asyncio-aiohttp"]
    if not _gevent_available():
        print("gevent is not installed: no gevent row", file=sys.stderr)
    for case in cases(args.quick, args.budget):
        results = run_case(case, chosen, max(1, args.repeat))
        print(table(case, results) + "\n", flush=True)


if __name__ == "__main__":
    main()
