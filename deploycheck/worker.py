"""The deployment-like process: load one artifact, run the evaluation batches, measure latency.

Every request is answered in a process of its own that has imported torch but no user code, with
a working directory outside the project, so the spec's model code is not importable unless the
format needs it (safetensors + factory). :mod:`deploycheck.isolation` starts
``python -I -m deploycheck.worker --zygote FD`` once per session: it imports torch, then forks one
child per request (:func:`zygote`), which answers it in a result file and exits. ``--serve``
answers one request in a process started for it (outside Linux, or with
``DEPLOYCHECK_WORKER_START=spawn``).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback

from . import lm_worker, timing
from .formats import FORMATS
from .formats.integrity import check_file, classify, vet_manifest
from .isolation import PARENT_ENV, die_with_parent, exit_child
from .loading import essence
from .outputs import OutputError, concat
from .protocol import (
    ArtifactRef,
    BatchDimError,
    Latency,
    LatencyPlan,
    WorkerRequest,
    WorkerResult,
    batch_len,
    call,
    peak_rss_mb,
    run_batch,
)
from .quiet import heavy, quiet


def _load(ref: ArtifactRef):
    """(callable, diagnosis-or-None) for one artifact."""
    import torch

    diag = check_file(ref.artifact, ref.format, ref.manifest)
    if diag:
        return None, diag
    fmt = FORMATS.get(ref.format)()
    options = fmt.Options(**ref.options)
    # the manifest is data: its factory and kwargs are the spec's, its libraries on an allow-list
    manifest, diag = vet_manifest(ref.manifest, ref.code, path=ref.artifact, uses_code=fmt.needs_code(options))
    if diag:
        return None, diag
    engine = (manifest.get("torch_settings") or {}).get("quantized_engine")
    if engine:  # packed int8 weights are repacked for the engine that is current at load time
        torch.backends.quantized.engine = engine
    for lib in manifest.get("requires", []):
        # Runtime libraries (not user code, see RUNTIME_LIBRARIES) that register the artifact's
        # operators, e.g. torchao's quantized_decomposed ops for pt2e int8 graphs; a deployment host installs them too.
        try:
            __import__(lib)
        except ImportError as e:
            return None, classify(e, ref.artifact)
    try:
        return fmt.load(ref.artifact, options=options, manifest=manifest), None
    except BaseException as e:  # noqa: BLE001 - any load failure is diagnosed, never raised
        d = classify(e, ref.artifact)
        return None, type(d)(d.kind, d.message + "\n" + "".join(traceback.format_exception(e))[-3000:])


def _trace_hint(msg: str) -> str:
    """A traced artifact that fails on a batch it was not traced with usually baked the trace's
    batch size in (a tensor made with a fixed batch, such as an RNN's h0; a view with constant sizes)."""
    if "TorchScript interpreter" not in msg or not any(
        s in msg for s in ("shape", "size", "cannot be multiplied", "doesn't match", "invalid for input")
    ):
        return ""
    return (
        "; if the inputs match model.inputs, the trace likely baked in a size it was traced with (a tensor "
        "created with a fixed batch size, such as an RNN's initial state, or a view/reshape with constant "
        "sizes): build those from the input's own sizes (x.size(0)), or script that code"
    )


def handle(req: WorkerRequest) -> WorkerResult:
    import torch

    torch.set_num_threads(int(req.threads))
    for p in req.python_path:
        sys.path.insert(0, p)
    res = WorkerResult(threads=torch.get_num_threads(), pid=os.getpid())
    t0 = time.perf_counter()
    with heavy():
        fn, diag = _load(req.target)
    res.load_s = time.perf_counter() - t0
    if diag:
        return res.fail("load", diag.kind, diag.message)
    # a causal LM's generation through its KV-cache step: first, while memory is quiet (lm_worker)
    with heavy():
        gen = lm_worker.start(req.generate, req.target) if req.generate else None
    stage = "latency"
    try:
        if req.latency:
            # Measured first, on fresh loads, before the evaluation batches touch the variant:
            # runtimes that specialise on the shapes they have seen (TorchScript's profiling
            # executor, onnxruntime's arena) would otherwise not be in the baseline's state.
            # Alone among the session's xdist workers: none builds, exports or evaluates meanwhile.
            with quiet():
                res.latency = _latency(fn, req.latency)
        if req.timing_only:  # a re-measurement: the evaluation's outputs are the cached ones
            res.ok = True
            res.peak_rss_mb = peak_rss_mb()
            return res
        stage = "run"
        with heavy():
            batches = torch.load(req.inputs, weights_only=True)
            outs = []
            with torch.inference_mode():
                for i, b in enumerate(batches):
                    try:
                        named = run_batch(fn, b, index=i)
                    except (BatchDimError, OutputError) as e:
                        return res.fail("run", "signature", str(e))
                    outs.append({k: o.detach().float().cpu() for k, o in named.items()})
            joined = concat(outs)
            torch.save(joined, req.outputs)
            if req.extra_inputs:
                with torch.inference_mode():
                    extra = concat(
                        [
                            {k: o.detach().float() for k, o in run_batch(fn, b).items()}
                            for b in torch.load(req.extra_inputs, weights_only=True)
                        ]
                    )
                torch.save(extra, req.outputs + ".extra.pt")
            if req.dynamic_inputs:
                # each declared dynamic size on its own: one that the artifact cannot run is a
                # verdict of the dynamic check (naming the input and dimension), not a failed load
                dyn = []
                for b in torch.load(req.dynamic_inputs, weights_only=True):
                    try:
                        with torch.inference_mode():
                            dyn.append({k: o.detach().float().cpu() for k, o in run_batch(fn, b).items()})
                        res.dynamic_errors.append(None)
                    except Exception as e:  # noqa: BLE001 - reported by the dynamic check
                        dyn.append({})
                        res.dynamic_errors.append((f"{type(e).__name__}: {e}".strip().splitlines() or [""])[0][:400])
                torch.save(dyn, req.outputs + ".dynamic.pt")
        res.output_shape = list(next(iter(joined.values())).shape) if joined else []
        res.output_shapes = {k: list(v.shape) for k, v in joined.items()}
        if req.generate and gen is not None:
            # A generation that fails is the generation check's failure (with its message); the
            # evaluation outputs above stand on their own for the other checks.
            lm_worker.finish(gen, req.generate, fn, res, load=_load)
    except BaseException as e:  # noqa: BLE001 - a crashing model is a result, not a worker failure
        msg = f"{type(e).__name__}: {e}".strip()
        hint = _trace_hint(msg)
        kind = "signature" if _is_signature_error(msg) else "error"
        if isinstance(e, MemoryError) or "can't allocate memory" in msg or "not enough memory" in msg:
            kind = "memory"
            msg = f"ran out of memory (isolation.memory_mb: {req.memory_mb}): {msg.splitlines()[0][:300]}"
        return res.fail(
            stage,
            kind,
            (essence(msg) if msg else type(e).__name__) + hint,
            "".join(traceback.format_exception(e))[-3000:],
        )
    res.ok = True
    res.peak_rss_mb = peak_rss_mb()
    return res


def _is_signature_error(msg: str) -> bool:
    keys = (
        "shape",
        "size mismatch",
        "dtype",
        "expected",
        "got invalid dimensions",
        "invalid_argument",
        "mat1 and mat2",
        "dimension",
        "guard failed",
    )
    low = msg.lower()
    return any(k in low for k in keys)


def _latency(fn, lat: LatencyPlan) -> Latency:
    """Absolute percentiles, and for variants the side-by-side ratio with a control.

    With a baseline, the baseline artifact is loaded twice (the second copy is the A/A control)
    and all three are measured by :func:`timing.side_by_side`; the variant's percentiles come
    from its own rounds there, so they too are taken in the same state as the baseline's."""
    import torch

    x = torch.load(lat.example, weights_only=True)
    out: dict = {}
    base = lat.baseline
    if base:
        # Loaded exactly as the variant was: outside inference_mode. Parameters created inside it
        # are inference tensors, which skip autograd bookkeeping on every op: a baseline loaded
        # that way ran 5-15% faster than an identical variant (measured through pytest).
        bfn, diag = _load(base)
        cfn, cdiag = _load(base) if not diag else (None, None)
    with torch.inference_mode():
        run = lambda: call(fn, x)  # noqa: E731
        ratio = None
        if base:
            if diag:
                out["ratio_error"] = f"baseline artifact failed to load: {diag.kind}: {diag.message.splitlines()[0]}"
            else:
                ratio = timing.side_by_side(
                    run,
                    lambda: call(bfn, x),
                    (lambda: call(cfn, x)) if cfn is not None else None,
                    limit=lat.ratio_limit,
                    warmup=lat.warmup,
                    min_rounds=lat.min_rounds,
                    max_time_s=lat.max_time_s,
                    round_s=lat.round_ms / 1e3,
                    confidence=lat.confidence,
                )
                if cdiag:
                    ratio["control_error"] = f"{cdiag.kind}: {cdiag.message.splitlines()[0]}"
                out["ratio"] = ratio
        if ratio is not None:
            st, n = dict(ratio["variant"]), ratio["calls_per_round"]
        else:
            st, n = timing.measure(run, warmup=lat.warmup, rounds=lat.min_rounds, round_s=lat.round_ms / 1e3)
        nx = batch_len(x)
        out.update(st, calls_per_round=n, batch=nx)
        out["throughput_per_s"] = nx / (st["p50_ms"] / 1e3) if st["p50_ms"] > 0 else None
        sizes = lat.batch_sizes
        if sizes:  # throughput mode: the example's rows repeated to each declared batch size
            out["throughput"] = {}
            for bs in sizes:
                xb = _repeat_to(x, bs)
                sb, _ = timing.measure(
                    functools.partial(call, fn, xb),
                    warmup=max(1, lat.warmup // 2),
                    rounds=max(5, lat.min_rounds // 3),
                    round_s=lat.round_ms / 1e3,
                )
                out["throughput"][str(bs)] = {"p50_ms": sb["p50_ms"], "samples_per_s": bs / (sb["p50_ms"] / 1e3)}
    return Latency(**out)


def _repeat_to(x, bs: int):
    """One input batch's rows repeated to ``bs`` rows (every input of a tuple or dict alike)."""
    if isinstance(x, dict):
        return {k: _repeat_to(v, bs) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_repeat_to(v, bs) for v in x)
    return x.repeat((bs + x.shape[0] - 1) // x.shape[0], *([1] * (x.dim() - 1)))[:bs]


def answer(path: str) -> int:
    """Answer the request at ``path`` in its result file (the one thing a worker process does)."""
    with open(path) as fh:
        req = WorkerRequest.from_json(json.load(fh))
    if req.memory_mb:
        import resource

        lim = int(req.memory_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    try:
        res = handle(req)
    except MemoryError:
        res = WorkerResult().fail("run", "memory", f"ran out of memory (limit {req.memory_mb} MB)")
    tmp = req.result + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(res.to_json(), fh)
    os.replace(tmp, req.result)
    sys.stdout.flush()
    return 0


def _start() -> None:
    """What every worker process does first: end with the process that started it, and import
    torch before a request arrives."""
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit():
        die_with_parent(int(parent))
    import torch  # noqa: F401


def serve() -> int:
    """A worker started for one request: import torch, read the request's path on stdin, answer."""
    _start()
    line = sys.stdin.readline().strip()
    return answer(line) if line else 0


def threads_now() -> int:
    """This process's thread count (Linux ``/proc``; 1 where it cannot be read)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def zygote(fd: int) -> int:
    """Import torch once, then fork a fresh child per request.

    Requests come on the socket ``fd`` from :class:`deploycheck.isolation.WorkerPool`: a request
    file's path, with the write end of the pipe the child's output goes to. The answers are lines:
    ``forked PID`` then ``exit PID CODE`` (the code as :attr:`subprocess.Popen.returncode` gives
    it), or ``spawn`` when this process has more than one thread and so cannot fork safely (a
    library's thread pool started at import); the pool then starts a process of its own for that
    request. The child runs in a session of its own (its process group is what the pool kills),
    with stdin at /dev/null and without this socket."""
    import socket

    _start()  # torch's import is paid once here, not once per request
    sock = socket.socket(fileno=fd)
    me = os.getpid()
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 8192, 1)
        except OSError:
            return 0
        if not msg or len(fds) != 1:
            for f in fds:
                os.close(f)
            return 0
        path, out = msg.decode(), fds[0]
        if threads_now() > 1:
            os.close(out)
            sock.sendall(b"spawn\n")
            continue
        pid = os.fork()
        if pid == 0:  # the child: answer and exit, never back into this loop
            code = 1
            try:
                sock.close()
                os.setsid()
                os.dup2(out, 1)
                os.dup2(out, 2)
                os.close(out)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                die_with_parent(me)
                code = answer(path)
            except BaseException:  # noqa: BLE001 - the pool reports the missing answer with this output
                traceback.print_exc()
            finally:
                exit_child(code)
        os.close(out)
        sock.sendall(f"forked {pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        sock.sendall(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        raise SystemExit(serve())
    if len(sys.argv) == 3 and sys.argv[1] == "--zygote" and sys.argv[2].isdigit():
        raise SystemExit(zygote(int(sys.argv[2])))
    print("usage: python -m deploycheck.worker --serve | --zygote FD", file=sys.stderr)
    raise SystemExit(2)
