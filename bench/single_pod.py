"""One pod, one small sklearn model: throughput and latency through the pod vs in-process vs MLServer.

    python bench/single_pod.py [--concurrency 32] [--seconds 5] [--rounds 3]
                               [--client h2load|grpc|tritonclient] [--no-mlserver]

Every figure is measured in this run: the in-process call is the floor, MLServer
(``mlserver`` + ``mlserver-sklearn`` in ``bench/.venvs/mlserver``, created on first
use) the baseline, with inference in the server's own process (``parallel_workers``
0), its fastest setting for a small model and the one the targets are set against.
MLServer with its default settings, which run inference in one worker process behind
the server's (``parallel_workers`` 1), is measured too, for what a stock install does.
A bare grpc.aio server in its own process that answers every ``ModelInfer`` with a
fixed response and does nothing else is the reference for what gRPC itself costs
here; its p99 against MLServer's shows how much of the p99 target the transport alone
leaves. All servers get the same client, the same concurrency and alternate runs,
because these machines are shared and noisy; the ratios are printed for the best run
of each and as the median of each round's own ratio, with the number of rounds whose
ratio met its target (for the bare server: the pod's target, as a reference).

The client is nghttp2's compiled HTTP/2 load generator h2load (Debian's
``nghttp2-client``) when it is on PATH: one connection, ``--concurrency`` streams, the
request built and framed once, latencies from its per-request log. It takes under a
tenth of a core, so what is measured is each server, not the client's share of a
two-core machine. h2load cannot read gRPC trailers and counts an error as a success:
the grpc client first learns the size of each server's good answer, and a run is
refused unless h2load received exactly that many bytes per call. Without h2load (or
with ``--client grpc``) the client is a grpc.aio channel that sends the request
serialized once and parses every answer; it takes a third to most of a core at these
rates, which the servers then lack. The stock client (``--client tritonclient``:
``tritonclient.grpc.aio``) builds each request and result in Python and costs about as
much CPU per call as the servers do. CPU use (in cores) of server and client is
printed for each run. Also prints the pod's resident memory with nothing loaded and
per loaded small model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil

from mesh.edge.client import MeshClient
from mesh_tools import samples
from mesh_tools.launcher import spawn_pod

HERE = Path(__file__).resolve().parent
MLSERVER_VENV = HERE / ".venvs" / "mlserver"
ROW = np.array([[5.1, 3.5, 1.4, 0.2]])


@dataclass
class Run:
    name: str
    requests: int
    seconds: float
    latencies_ms: np.ndarray
    server_cores: float = 0.0
    client_cores: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))

    def line(self) -> str:
        return (
            f"{self.name:<22} {self.rps:>9.0f} req/s   p50 {self.pct(50):7.2f} ms   "
            f"p99 {self.pct(99):7.2f} ms   ({self.requests} calls{self.cpu()})"
        )

    def cpu(self) -> str:
        if not self.server_cores:
            return ""
        return f"; CPU: server {self.server_cores:.2f}, client {self.client_cores:.2f} cores"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(target: str, model: str, timeout: float = 120.0) -> None:
    import tritonclient.grpc as tc

    deadline = time.monotonic() + timeout
    client = tc.InferenceServerClient(target)
    try:
        while time.monotonic() < deadline:
            try:
                if client.is_server_ready() and (not model or client.is_model_ready(model)):
                    return
            except Exception:
                pass
            time.sleep(0.2)
    finally:
        client.close()
    raise RuntimeError(f"{target} not ready after {timeout}s")


async def drive(
    name: str,
    target: str,
    model: str,
    input_name: str,
    concurrency: int,
    seconds: float,
    client: str = "grpc",
) -> Run:
    """``concurrency`` callers, each sending its next call when its last one is answered."""
    call = CLIENTS[client](target, model, input_name)
    latencies: list[float] = []
    async with call:
        for _ in range(50):  # warm-up
            await call.infer()
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                await call.infer()
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Run(name, len(latencies), elapsed, np.array(latencies))


class _Caller:
    def __init__(self, target: str, model: str, input_name: str) -> None: ...

    async def infer(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> _Caller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class GrpcCaller(_Caller):
    """The request serialized once; every answer parsed and checked for the output."""

    def __init__(self, target: str, model: str, input_name: str) -> None:
        from mesh_proto import grpc_service_pb2 as v2

        request = v2.ModelInferRequest(model_name=model)
        request.inputs.add(name=input_name, datatype="FP64", shape=list(ROW.shape))
        request.raw_input_contents.append(ROW.tobytes())
        self.body = request.SerializeToString()
        self._parse = v2.ModelInferResponse.FromString
        self._target = target
        self.answer_sizes: set[int] = set()
        """The serialized size of every answer seen: h2load's runs are checked against it."""

    async def __aenter__(self) -> GrpcCaller:
        self._channel = grpc.aio.insecure_channel(self._target)
        self._call = self._channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        return self

    async def infer(self) -> None:
        raw = await self._call(self.body)
        self.answer_sizes.add(len(raw))
        answer = self._parse(raw)
        if not answer.raw_output_contents:
            raise RuntimeError(f"an answer without outputs: {answer}")

    async def close(self) -> None:
        await self._channel.close()


class TritonCaller(_Caller):
    def __init__(self, target: str, model: str, input_name: str) -> None:
        import tritonclient.grpc.aio as tca

        self._client = tca.InferenceServerClient(target)
        self._model = model
        self._tensor = tca.InferInput(input_name, list(ROW.shape), "FP64")
        self._tensor.set_data_from_numpy(ROW)

    async def infer(self) -> None:
        await self._client.infer(self._model, [self._tensor])

    async def close(self) -> None:
        await self._client.close()


CLIENTS: dict[str, type[_Caller]] = {"grpc": GrpcCaller, "tritonclient": TritonCaller}

H2LOAD_INSTALL = "Debian and Ubuntu: apt-get install nghttp2-client"


async def answer_size(target: str, model: str, input_name: str, calls: int = 50) -> int:
    """The serialized size of the server's answer to the benchmark's request, from ``calls``
    calls through the grpc client (each parsed and checked); one size for every answer."""
    async with GrpcCaller(target, model, input_name) as call:
        for _ in range(calls):
            await call.infer()
    if len(call.answer_sizes) != 1:
        raise RuntimeError(
            f"{target} answers one request in {sorted(call.answer_sizes)} bytes: h2load's "
            "byte count cannot show that every call succeeded"
        )
    return call.answer_sizes.pop()


def drive_h2load(
    name: str, target: str, model: str, input_name: str, concurrency: int, seconds: float
) -> Run:
    """``concurrency`` streams on one HTTP/2 connection from h2load, each sending its next call
    when its last one is answered.

    h2load counts a gRPC error (HTTP 200, no message, grpc-status in the trailers) as a
    success, so the grpc client first learns the size of a good answer and the run is
    refused unless h2load received exactly that many DATA bytes per call: a single error
    among the calls leaves the count short by one answer. A stream the run's end cut off
    may have brought its message without its trailers: at most one answer each is allowed.
    """
    h2load = shutil.which("h2load")
    if h2load is None:
        raise SystemExit(f"--client h2load needs h2load on PATH ({H2LOAD_INSTALL})")
    framed = 5 + asyncio.run(answer_size(target, model, input_name))
    body = GrpcCaller(target, model, input_name).body
    with tempfile.TemporaryDirectory(prefix="mesh-h2load-") as tmp:
        frame, log = Path(tmp) / "request", Path(tmp) / "log.tsv"
        frame.write_bytes(b"\0" + struct.pack(">I", len(body)) + body)
        # no --warm-up-time: h2load then logs the warm-up's calls too; the grpc calls above warm up
        command = [h2load, "-D", f"{round(seconds * 1000)}ms", "-c", "1", "-t", "1", "-m", str(concurrency)]
        command += ["-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers"]
        command += ["--log-file", str(log), f"http://{target}/inference.GRPCInferenceService/ModelInfer"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=True)
        out = done.stdout
        latencies_ms = np.loadtxt(log, usecols=2, ndmin=1) / 1000
    finished = re.search(r"finished in ([\d.]+)s", out)
    counts = re.search(r"requests: \d+ total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    data = re.search(r"traffic: .*\((\d+)\) data", out)
    if finished is None or counts is None or data is None:
        raise RuntimeError(f"cannot read h2load's report:\n{out}")
    started, ended, succeeded, failed = (int(g) for g in counts.groups())
    answers, extra = divmod(int(data.group(1)), framed)
    if failed or extra or not succeeded <= answers <= succeeded + started - ended:
        raise RuntimeError(
            f"{name}: {failed} failed calls, and {int(data.group(1))} DATA bytes for {succeeded} calls "
            f"answered in {framed} bytes each: some answers were gRPC errors\n{out}"
        )
    return Run(name, succeeded, float(finished.group(1)), latencies_ms)


def in_process(model_path: Path, seconds: float) -> Run:
    from adapters import adapter_for

    model = adapter_for("sklearn").load(model_path)
    latencies = []
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        model.infer({"input-0": ROW}, ["predict"])
        latencies.append((time.perf_counter() - t0) * 1000)
    return Run("in-process predict", len(latencies), time.perf_counter() - started, np.array(latencies))


def start_pod(workdir: Path, capacity: str = "1GiB") -> tuple[subprocess.Popen[bytes], str]:
    return spawn_pod(workdir, "--metrics-port", "-1", "--capacity", capacity)


def ensure_mlserver() -> Path | None:
    binary = MLSERVER_VENV / "bin" / "mlserver"
    if binary.exists():
        return binary
    print("creating the MLServer venv (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
    result = subprocess.run(
        [
            str(MLSERVER_VENV / "bin" / "pip"),
            "install",
            "-q",
            "mlserver==1.7.1",
            "mlserver-sklearn==1.7.1",
            "uvloop<0.22",
        ],
        check=False,
    )
    return binary if result.returncode == 0 and binary.exists() else None


def grpc_version(python: Path) -> str:
    """The grpcio another venv's Python imports: its speed varies between releases."""
    found = subprocess.run(
        [str(python), "-c", "import grpc; print(grpc.__version__)"], capture_output=True, text=True
    )
    return found.stdout.strip() or "unknown"


BASELINE = "MLServer"
MLSERVER_CONFIGS: dict[str, dict[str, object]] = {
    BASELINE: {"parallel_workers": 0},
    "MLServer defaults": {},
}
"""The MLServer runs, by name, and the settings each adds to ports and host; the targets are
against ``BASELINE``."""


def start_mlserver(
    binary: Path, model_path: Path, workdir: Path, settings: dict[str, object]
) -> tuple[subprocess.Popen[bytes], str]:
    repo = workdir / "mlserver"
    (repo / "iris").mkdir(parents=True, exist_ok=True)
    grpc_port, http_port = free_port(), free_port()
    own = {"grpc_port": grpc_port, "http_port": http_port, "host": "127.0.0.1", "metrics_endpoint": None}
    (repo / "settings.json").write_text(json.dumps({**own, **settings}))
    (repo / "iris" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "iris",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": str(model_path)},
            }
        )
    )
    env = {**os.environ, "PATH": f"{binary.parent}:{os.environ.get('PATH', '')}"}
    log = (workdir / "mlserver.log").open("wb")
    process = subprocess.Popen([str(binary), "start", str(repo)], stdout=log, stderr=log, env=env)
    return process, f"127.0.0.1:{grpc_port}"


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def memory(workdir: Path, model_path: Path, count: int) -> tuple[float, float]:
    """The pod's RSS (MiB) with nothing loaded, and per loaded small model."""
    process, target = start_pod(workdir)
    try:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        with MeshClient(target) as client:
            client.register("warm", "sklearn", str(model_path), load_now=True, sync=True)
            client.unregister("warm")
            time.sleep(0.5)
            base = psutil.Process(process.pid).memory_info().rss
            for i in range(count):
                path = samples.sklearn_classifier(workdir / f"mem{i}", seed=i)
                client.register(f"mem{i}", "sklearn", str(path), load_now=True, sync=True)
            time.sleep(0.5)
            loaded = psutil.Process(process.pid).memory_info().rss
    finally:
        stop(process)
    return base / 2**20, (loaded - base) / count / 2**10


def measured(
    name: str,
    process: subprocess.Popen[bytes],
    target: str,
    wait_for_model: str,
    args: argparse.Namespace,
    register: Path | None = None,
) -> Run:
    """Drive one server process (stopped afterwards); ``register`` loads the model into a pod first."""
    try:
        wait_ready(target, wait_for_model)
        if register is not None:
            with MeshClient(target) as client:
                client.register("iris", "sklearn", str(register), load_now=True, sync=True)
        server, client = _cpu_seconds(process.pid), _client_cpu_seconds()
        started = time.perf_counter()
        if args.client == "h2load":
            run = drive_h2load(name, target, "iris", "input-0", args.concurrency, args.seconds)
        else:
            run = asyncio.run(
                drive(name, target, "iris", "input-0", args.concurrency, args.seconds, args.client)
            )
        elapsed = time.perf_counter() - started
        run.server_cores = (_cpu_seconds(process.pid) - server) / elapsed
        run.client_cores = (_client_cpu_seconds() - client) / elapsed
    finally:
        stop(process)
    print(run.line(), flush=True)
    return run


@dataclass(frozen=True)
class Target:
    """A ratio the pod must reach against the baseline: at least ``bound``, or at most it."""

    bound: float
    at_least: bool
    reference: bool = False
    """Printed for the no-op server, which has no target of its own."""

    def met(self, ratio: float) -> bool:
        return ratio >= self.bound if self.at_least else ratio <= self.bound

    def no_op(self) -> Target:
        return Target(self.bound, self.at_least, reference=True)

    def __str__(self) -> str:
        text = f"{'>=' if self.at_least else '<='} {self.bound:g}x"
        return f"({text})" if self.reference else text


THROUGHPUT_TARGET = Target(3.0, at_least=True)
P99_TARGET = Target(0.33, at_least=False)


def best_of(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.rps)


def _rps(run: Run) -> float:
    return run.rps


def _p99(run: Run) -> float:
    return run.pct(99)


def _cpu_seconds(pid: int, *, children: bool = True) -> float:
    """CPU time of a process (and its children) so far."""
    process = psutil.Process(pid)
    total = 0.0
    for p in (process, *(process.children(recursive=True) if children else ())):
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _client_cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (h2load, when it drives);
    the servers are children too, but each is waited for only after its run."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return _cpu_seconds(os.getpid(), children=False) + children.ru_utime + children.ru_stime


def start_bare() -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen([sys.executable, __file__, "--serve-bare"], stdout=subprocess.PIPE)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return process, f"127.0.0.1:{port}"


def serve_bare() -> None:
    """The ceiling: a grpc.aio server answering every ``ModelInfer`` with one fixed response."""
    from mesh_proto import grpc_service_pb2 as v2

    response = v2.ModelInferResponse(model_name="iris")
    response.outputs.add(name="predict", datatype="INT64", shape=[1])
    response.raw_output_contents.append(np.zeros(1, dtype=np.int64).tobytes())
    answer = response.SerializeToString()
    ready = v2.ServerReadyResponse(ready=True).SerializeToString()

    async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    async def server_ready(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return ready

    async def serve() -> None:
        handler = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService",
            {
                "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
                "ServerReady": grpc.unary_unary_rpc_method_handler(server_ready),
            },
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--client",
        choices=[*sorted(CLIENTS), "h2load"],
        help="the load generator every server gets (default: h2load when on PATH, else grpc)",
    )
    parser.add_argument("--memory-models", type=int, default=200)
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare()
        return 0
    if args.client is None:
        args.client = "h2load" if shutil.which("h2load") else "grpc"
        if args.client == "grpc":
            print(
                f"h2load is not on PATH ({H2LOAD_INSTALL}): driving with the grpc client, which takes "
                "CPU from the servers it measures on a small machine"
            )

    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        workdir = Path(tmp)
        model_path = samples.sklearn_classifier(workdir / "iris")
        floor = in_process(model_path, args.seconds)
        mlserver = None if args.no_mlserver else ensure_mlserver()
        if mlserver is None and not args.no_mlserver:
            print("MLServer could not be installed: comparing against in-process only")
        pod_runs: list[Run] = []
        ml_runs: dict[str, list[Run]] = {name: [] for name in MLSERVER_CONFIGS} if mlserver else {}
        bare_runs: list[Run] = []
        for round_index in range(args.rounds):
            process, target = start_pod(workdir)
            pod_runs.append(measured(f"mesh pod #{round_index + 1}", process, target, "", args, model_path))
            for name, runs in ml_runs.items() if mlserver is not None else ():
                process, target = start_mlserver(mlserver, model_path, workdir, MLSERVER_CONFIGS[name])
                runs.append(measured(f"{name} #{round_index + 1}", process, target, "iris", args))
            process, target = start_bare()
            bare_runs.append(measured(f"bare grpc.aio #{round_index + 1}", process, target, "", args))
        base_mib, per_model_kib = memory(workdir, model_path, args.memory_models)

    best_pod, best_bare = best_of(pod_runs), best_of(bare_runs)
    print()
    print(
        f"small sklearn model, batch 1, {args.concurrency} concurrent callers, {args.seconds:g}s per run, "
        f"client {args.client}"
    )
    mlserver_grpc = f", MLServer's {grpc_version(mlserver.parent / 'python')}" if mlserver else ""
    print(f"grpcio: the pod's and bare grpc.aio's {grpc.__version__}{mlserver_grpc}")
    print(floor.line())
    print(best_pod.line())
    print(
        f"pod / in-process throughput: {best_pod.rps / floor.rps:.3f}x "
        f"(p50 {best_pod.pct(50) / floor.pct(50):.0f}x the bare call)"
    )
    print(best_bare.line())
    for runs in ml_runs.values():
        print(best_of(runs).line())
    print()
    print(f"{'ratio':<48} {'best runs':>10} {'median of rounds':>17}   {'target':>10}   rounds within it")
    comparisons: list[tuple[str, list[Run], list[Run], Callable[[Run], float], Target | None]] = [
        ("pod / bare grpc.aio throughput", pod_runs, bare_runs, _rps, None)
    ]
    for name, runs in ml_runs.items():
        baseline = name == BASELINE
        throughput, p99 = (THROUGHPUT_TARGET, P99_TARGET) if baseline else (None, None)
        comparisons += [
            (f"pod / {name} throughput", pod_runs, runs, _rps, throughput),
            (f"pod / {name} p99", pod_runs, runs, _p99, p99),
            # the no-op server against the pod's targets: what the transport alone leaves of them
            (f"bare grpc.aio / {name} throughput", bare_runs, runs, _rps, throughput and throughput.no_op()),
            (f"bare grpc.aio / {name} p99", bare_runs, runs, _p99, p99 and p99.no_op()),
        ]
    for label, ours, theirs, figure, target in comparisons:
        best = figure(best_of(ours)) / figure(best_of(theirs))
        ratios = [figure(a) / figure(b) for a, b in zip(ours, theirs, strict=True)]
        rounds = float(np.median(ratios))
        within = f"{sum(map(target.met, ratios))} of {len(ratios)}" if target is not None else ""
        print(f"{label:<48} {best:>9.2f}x {rounds:>16.2f}x   {target or ''!s:>10}   {within}")
    print(
        f"pod resident memory, nothing loaded: {base_mib:.0f} MiB; "
        f"per loaded small sklearn model: {per_model_kib:.0f} KiB ({args.memory_models} models)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
