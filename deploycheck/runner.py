"""The session's pipeline: build -> save -> reload in a fresh process -> run (one module per
stage in :mod:`deploycheck.stages`, each a function of its explicit inputs). The runner alone
orders the stages, hands each what it needs, and memoises every stage and every model run that
checks need, so each variant is built once, each artifact saved and reloaded once, and each
extra model run (batch invariance, semantic embeddings, divergence tables) done once, whatever
items ask for them.

Failures are memoised too: the first item that needs a failed stage shows the full error, later
ones the same one-line cause, instead of an avalanche of tracebacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import traceback
from collections.abc import Callable
from typing import Any

from . import diverge
from .cache import Cache, build_key, value_key
from .data.sources import read_prompts
from .errors import StageError
from .isolation import ChildGone, ChildUnpicklable, RemoteError, WorkerPool, call_forked, call_in_thread, can_fork
from .lm import greedy, hf_steps, recompute_steps
from .loading import baseline_arch, build_baseline, describe_exc
from .outputs import OutputError, pick
from .protocol import ArtifactRef, BatchDimError, concat_inputs, describe_batch, peak_rss_mb, run_batch, take
from .quiet import heavy, once
from .signature import dynamic_probes
from .stages import build, reload, save
from .stages.build import BuildInputs, Built
from .stages.reload import Reload
from .stages.save import Artifact, VariantUnsupported
from .target import Target

_STAGE_OF = {"artifact": "save", "reload": "load"}


def _stacks(dump: str, n: int = 40) -> str:
    """faulthandler's dump of a build process, cut to the build's own frames (the frames under the
    fork are how the session got there) and to its first lines (most recent call first: the frame
    that hung or crashed is on top)."""
    lines: list[str] = []
    under_fork = False
    for line in dump.rstrip().splitlines():
        if line.startswith("  File "):
            if under_fork:
                continue
            if 'isolation.py", line' in line and line.endswith(" in _child_run"):
                under_fork = True
                continue
        else:
            under_fork = False
        lines.append(line)
    return "\n".join(lines[:n] + ([f"[… {len(lines) - n} more lines]"] if len(lines) > n else []))


def _causal_lm(spec) -> bool:
    """A causal LM ships with its tokenizer."""
    return spec.model.hf is not None and spec.model.hf.task == "causal-lm"


def with_declared_dtypes(spec, b):
    """bfloat16 inputs (numpy has none) cast on the tensor side; every other dtype is the data's."""
    import torch

    if isinstance(b, dict):
        decl = dict(spec.model.inputs.items)
        return {k: v.to(torch.bfloat16) if decl[k].dtype == "bfloat16" else v for k, v in b.items()}
    return b.to(torch.bfloat16) if spec.model.inputs.dtype == "bfloat16" else b


def baseline_input_problem(spec, *, what: str, given, sample: list, error: str) -> str:
    """Why the baseline cannot run as declared, with what was declared and what the data gave,
    pointing at the two keys that decide it."""
    declared = spec.model.inputs.describe()
    data = describe_batch(sample[0]) if sample else "no samples"
    return (
        f"the baseline model cannot run on {what} ({describe_batch(given)}): {error}\n"
        f"  model.inputs declares {declared}; the data ({spec.data.source}"
        f"{' after preprocess' if spec.data.preprocess else ''}) gives evaluation batches of {data}\n"
        f"  fix model.inputs to the shape and dtype the model takes, or the data (data.preprocess: reshape, "
        f"scale, dtype) to match it"
    )


#: a stage running longer than this says so on the terminal (and says when it ends)
PROGRESS_AFTER_S = 20.0


def in_process(fn: Callable[[], Any], *, spec, what: str, variant: str, where: str) -> Any:
    """``fn()`` in this process (library code, no user code to contain): its errors become build
    errors naming ``what`` and where the spec declares it, as :meth:`Runner.contained`'s do."""
    try:
        return fn()
    except StageError:
        raise
    except Exception as e:
        raise StageError.at(spec, "build", f"{what}: {describe_exc(e)}", variant=variant, where=where) from e


def give_back_memory() -> None:
    """Hand the heap memory freed so far back to the operating system (glibc's ``malloc_trim``):
    a large model's tensors freed by reference counting otherwise stay in the process's heap, and
    the next variant's peak stacks on top of them. A no-op where there is no glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Runner:
    def __init__(
        self,
        *,
        run_dir: str,
        log: Callable[[str], None] = lambda s: None,
        cache: Cache | None = None,
        progress: Callable[[str], None] | None = None,
    ):
        self.cache = cache or Cache(None)
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.pool = WorkerPool(os.path.join(run_dir, "workers"))
        self.log = log
        self._memo_store: dict[tuple, tuple[str, Any]] = {}
        #: (stage, spec path, variant, format or None) -> {"s": wall seconds, "session_peak_mb": ...}
        self.stage_costs: dict[tuple, dict] = {}
        self.progress = progress  # a line for the terminal when a stage runs long (see _stage)

    @contextlib.contextmanager
    def _stage(self, stage: str, t: Target, what: str):
        """Time one stage of ``t`` (build, export, fresh process) and note the session's peak
        resident memory after it (the load item's details and the report's stage table). A stage
        still running after ``PROGRESS_AFTER_S`` says so on the terminal, and says when it ends."""
        import threading
        import time

        t0 = time.perf_counter()
        said: list[bool] = []

        def long_running() -> None:
            said.append(True)
            if self.progress is not None:
                self.progress(f"deploycheck: {t.spec.name}/{t.vname}: {what} (running {PROGRESS_AFTER_S:g} s so far)")

        timer = threading.Timer(PROGRESS_AFTER_S, long_running)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            give_back_memory()  # an export's transient copies of the weights, freed, leave the heap
            seconds = time.perf_counter() - t0
            peak = peak_rss_mb()
            self.stage_costs[(stage, t.spec.path, t.vname, t.fmt)] = {"s": round(seconds, 3), "session_peak_mb": peak}
            if said and self.progress is not None:
                self.progress(
                    f"deploycheck: {t.spec.name}/{t.vname}: {what} took {seconds:.1f} s "
                    f"(this process's peak memory so far: {peak:,.0f} MB)"
                )

    def costs_of(self, t: Target) -> dict:
        """Seconds of each stage ``t``'s artifact needed in this session (its build, its export,
        its fresh process), and this process's peak resident memory after the last of them."""
        out: dict[str, Any] = {}
        for stage, key in (("build", (t.spec.path, t.vname, None)), ("export", (t.spec.path, t.vname, t.fmt))):
            c = self.stage_costs.get((stage, *key))
            if c is not None:
                out[f"{stage}_wall_s"] = c["s"]
                out["session_peak_mb"] = max(out.get("session_peak_mb", 0.0), c["session_peak_mb"])
        return out

    def close(self) -> None:
        self.pool.close()

    def release(self, spec_path: str, vname: str | None = None) -> int:
        """Forget what the session holds for variant ``vname`` of a spec (its built model, artifact
        handles, fresh-process outputs and in-memory runs), or for the whole spec with ``vname``
        None, once their items have run: a spec of several large variants (an LLM in six recipes)
        otherwise keeps every model in memory until the session ends. A later item that needs one
        again (an unusual order) gets it from the cache or builds it again. Returns how many
        entries were dropped."""
        drop = [
            k
            for k in self._memo_store
            if len(k) >= 2 and k[1] == spec_path and (vname is None or (len(k) >= 3 and k[2] == vname))
        ]
        for k in drop:
            del self._memo_store[k]
        if drop:
            give_back_memory()
        return len(drop)  # freed by reference counting (a full gc pass per variant cost 0.1-0.3 s)

    def _memo(self, name: str, target: Any, fn: Callable[[], Any]) -> Any:
        """``fn()`` once per session for ``name`` and ``target`` (a Target, or a spec for what the
        whole spec shares); its error too, located at ``target``."""
        key = target.key(name) if isinstance(target, Target) else (name, target.path)
        if key not in self._memo_store:
            try:
                self._memo_store[key] = ("ok", fn())
            except (StageError, VariantUnsupported) as e:
                self._memo_store[key] = ("err", e)
            except Exception as e:  # a bug or an unforeseen library error: still one clear, located message
                self._memo_store[key] = (
                    "err",
                    StageError.at(
                        target,
                        _STAGE_OF.get(name, "build"),
                        f"unexpected error: {describe_exc(e)}",
                        detail="".join(traceback.format_exception(e))[-3000:],
                    ),
                )
        status, value = self._memo_store[key]
        if status == "err":
            raise value
        return value

    # --- inputs -----------------------------------------------------------------------------------

    def data(self, spec):
        """The spec's data, loaded, split and preprocessed once per session; kept by the cache
        across sessions when its source is a file or a library's dataset (see ``KEPT_SOURCES``)."""
        from .data.dataset import keepable, load, restored, stored  # numpy

        def fresh():
            return self.contained(
                lambda: load(spec), spec=spec, what=f"loading data {spec.data.source!r}", where=spec.where("data")
            )

        def make():
            if not (self.cache.enabled and keepable(spec)):
                return fresh()
            # the baseline's build key covers the data's source and file, its preprocessing, the
            # tokenizer's files, the libraries and deploycheck's own code
            key = value_key(build_key(spec, "baseline"), "dataset", None)
            got = self.cache.get_value(key, hit="dataset")
            ds = restored(got) if got is not None else None
            if ds is None:
                ds = fresh()
                keep = stored(ds)
                if keep is not None:
                    self.cache.put_value(key, keep)
            return ds

        return self._memo("data", spec, make)

    def spec_value(self, spec, name: str, inputs: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, kept by the cache under the baseline's build key (the model's files,
        tokenizer included, the data and the code), ``name`` and ``inputs`` by content."""
        if not self.cache.enabled:
            return compute()
        return self.cached_value(build_key(spec, "baseline"), name, inputs, compute)

    def batches(self, spec) -> list:
        def make():
            batches = self.data(spec).eval_batches(spec.data.batch_size)
            return [with_declared_dtypes(spec, b) for b in batches]

        return self._memo("batches", spec, make)

    def labels(self, spec):
        import torch

        y = self.data(spec).y_test
        return None if y is None else torch.from_numpy(y)

    def example(self, spec):
        """The example input (each named input's, by name): real held-out samples when their shape
        fits, else seeded random values of the declared dtype."""

        def make():
            import numpy as np
            import torch

            sig = spec.model.inputs
            x_all = self.data(spec).x_test
            out = {}
            for name, inp in sig.items:
                shape = tuple(inp.shape)
                dtype = getattr(torch, inp.dtype)
                x = x_all[name] if isinstance(x_all, dict) else x_all
                if tuple(x.shape[1:]) == shape[1:] and len(x) >= shape[0]:
                    out[name] = torch.from_numpy(np.ascontiguousarray(x[: shape[0]])).to(dtype)
                    continue
                g = torch.Generator().manual_seed(0)
                if dtype.is_floating_point:
                    out[name] = torch.randn(shape, generator=g).to(dtype)
                elif dtype == torch.bool:
                    out[name] = torch.ones(shape, dtype=torch.bool)  # a mask that keeps every position
                else:
                    out[name] = torch.randint(0, 100, shape, generator=g, dtype=dtype)
            return out if sig.named else out["x"]

        return self._memo("example", spec, make)

    def semantic_batches(self, spec):
        """The semantic triplets' texts, preprocessed like the data, in evaluation-sized batches."""

        def make():
            import numpy as np
            import torch

            from .data.dataset import keepable, load_triplets

            def read():
                x, triplets = load_triplets(spec)
                return [torch.from_numpy(np.ascontiguousarray(x)), [list(map(int, tr)) for tr in triplets]]

            try:
                # kept under the baseline's build key, which covers the triplets file and the tokenizer
                t, triplets = self.spec_value(spec, "semantic-triplets", None, read) if keepable(spec) else read()
                triplets = [tuple(tr) for tr in triplets]
            except StageError:
                raise
            except Exception as e:
                raise StageError.at(
                    spec, "build", f"cannot read semantic triplets: {describe_exc(e)}", where=spec.where("semantic")
                ) from e
            bs = spec.data.batch_size
            return [t[i : i + bs] for i in range(0, len(t), bs)], triplets

        return self._memo("semantic", spec, make)

    def tokenizer_dir(self, spec) -> str:
        """The folder of a causal LM's model and tokenizer (model.hf, resolved; a GGUF file's conversion)."""
        from .hf import model_folder

        return model_folder(spec.model.hf, os.path.dirname(os.path.abspath(spec.path)))

    def prompts(self, spec) -> tuple[list[str], list[list[int]]]:
        """The generation prompts' texts and their token ids (the model's own tokenizer)."""

        def make():
            from .hf import prompt_ids

            where = spec.where("generation")
            try:
                prompts = read_prompts(
                    os.path.join(os.path.dirname(os.path.abspath(spec.path)), spec.generation.prompts)
                )
                if not prompts:
                    raise ValueError(f"{spec.generation.prompts} holds no prompt")
                texts, ids = self.spec_value(
                    spec, "prompt-ids", prompts, lambda: prompt_ids(prompts, path=self.tokenizer_dir(spec))
                )
                return list(texts), [list(map(int, i)) for i in ids]
            except Exception as e:
                raise StageError.at(
                    spec, "build", f"cannot read the generation prompts: {describe_exc(e)}", where=where
                ) from e

        return self._memo("prompts", spec, make)

    def generations(self, t: Target, *, recompute: bool = False) -> list[list[int]]:
        """The in-memory variant's greedy generations, through its own KV cache (``transformers``'
        cache), once per session; ``recompute``: without a cache, the whole sequence run again at
        every step (to tell a recipe whose result depends on the path from a bad file)."""

        gen = t.spec.generation
        if gen is None:
            raise StageError.at(t, "check", "greedy generation needs the spec's generation section")

        def make():
            model = self.built(t).model
            from .hf import CausalLM

            lm = next((m for m in model.modules() if isinstance(m, CausalLM)), None) if model is not None else None
            if lm is None:
                raise StageError.at(t, "check", "greedy generation in memory needs a model.hf causal LM")
            prefill, decode = recompute_steps(lm.lm) if recompute else hf_steps(lm.lm)
            _, ids = self.prompts(t.spec)
            eos = getattr(lm.lm.config, "eos_token_id", None)
            eos = eos if isinstance(eos, int) else None
            return [greedy(prefill, decode, p, new_tokens=gen.new_tokens, eos_id=eos) for p in ids]

        def cached():
            built = self.built(t)
            _, ids = self.prompts(t.spec)
            # the prompts' token ids and the generation settings; the tokenizer and config.json
            # are in the built variant's key (the model folder's files)
            name = "generations-recomputed" if recompute else "generations"
            return self.cached_value(built.key, name, [ids, gen.new_tokens], make)

        return self._memo("generations-recomputed" if recompute else "generations", t.without_format(), cached)

    def inputs_files(self, spec) -> dict:
        """The evaluation batches, example input and semantic texts as files a worker reads.
        Written once per session, never reused from an earlier one: the run dir outlives sessions
        and a changed spec (data, preprocessing) must not reload stale inputs."""

        def make():
            import torch

            d = os.path.join(self.run_dir, spec.name)
            os.makedirs(d, exist_ok=True)
            files = {"eval": os.path.join(d, "eval_inputs.pt"), "example": os.path.join(d, "example_input.pt")}
            torch.save(self.batches(spec), files["eval"])
            torch.save(self.example(spec), files["example"])
            if spec.semantic is not None:
                files["semantic"] = os.path.join(d, "semantic_inputs.pt")
                torch.save(self.semantic_batches(spec)[0], files["semantic"])
            probes = self.dynamic_probes(spec)
            if probes:
                files["dynamic"] = os.path.join(d, "dynamic_inputs.pt")
                torch.save([p.batch for p in probes], files["dynamic"])
            if spec.generation is not None:
                files["prompts"] = os.path.join(d, "prompt_ids.pt")
                torch.save(self.prompts(spec)[1], files["prompts"])
            return files

        return self._memo("inputs-files", spec, make)

    def dynamic_probes(self, spec) -> list:
        """Batches at each declared dynamic dimension's min, middle and max size (see
        :func:`deploycheck.signature.dynamic_probes`), built from the first evaluation rows."""
        return self._memo("dynamic-probes", spec, lambda: dynamic_probes(spec, self.batches(spec)))

    def inputs_sha(self, spec) -> str:
        def make():
            import torch

            h = hashlib.sha256()
            extra = self.semantic_batches(spec)[0] if spec.semantic is not None else []
            extra = extra + [p.batch for p in self.dynamic_probes(spec)]
            for batch in self.batches(spec) + [self.example(spec)] + extra:
                for name, b in batch.items() if isinstance(batch, dict) else [("", batch)]:
                    h.update(str((name, tuple(b.shape), str(b.dtype))).encode())
                    h.update(b.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            if spec.generation is not None:
                h.update(repr(self.prompts(spec)[1]).encode())
            return h.hexdigest()

        return self._memo("inputs-sha", spec, make)

    def variant_dir(self, t: Target) -> str:
        d = os.path.join(self.run_dir, t.spec.name, t.vname)
        os.makedirs(d, exist_ok=True)
        return d

    # --- stages -----------------------------------------------------------------------------------

    def baseline_model(self, spec):
        what = (
            f"loading Hugging Face model {spec.model.hf.path!r}"
            if spec.model.hf is not None
            else f"creating the model with factory {spec.model.factory!r}"
        )

        def make():
            if spec.model.hf is not None and not spec.model.weights:
                # transformers' own loading, no user code: in this process, so the weights are never
                # pickled back from a child (a 135M LLM: 0.54 GB copied, 1 GB more at the peak)
                return in_process(
                    lambda: build_baseline(spec), spec=spec, what=what, variant="baseline", where=spec.where("model")
                )
            return self.contained(
                lambda: build_baseline(spec), spec=spec, variant="baseline", what=what, where=spec.where("model")
            )

        return self._memo("baseline-model", spec, make)

    def contained(self, fn: Callable[[], Any], *, spec, what: str, where: str, variant: str | None = None) -> Any:
        """``fn()``, which runs the spec's own code (factory, data callable, recipes, the in-memory
        evaluation), in a forked child process limited by ``isolation.build_timeout_s``: a build
        that hangs, segfaults or ends its process fails its items, and the session goes on. The
        value comes back pickled; one that cannot be pickled is built again in this process (a
        daemon thread, still under the timeout). Its log lines are replayed here."""
        timeout = spec.isolation.build_timeout_s
        lines: list[str] = []

        def in_child():
            self.log = lines.append  # this is the child's copy of the runner
            return fn(), lines

        limit = f"isolation.build_timeout_s: {timeout:g}" + (
            f" at {spec.where('isolation')}" if "isolation" in spec.lines else ", the default"
        )
        try:
            if can_fork():
                try:
                    value, lines = call_forked(
                        in_child, timeout_s=timeout, workdir=os.path.join(self.run_dir, "builds")
                    )
                except ChildUnpicklable as e:
                    self.log(
                        f"{spec.name}: {what}: the result cannot be sent back from its build process ({e}); "
                        f"built again in this process"
                    )
                    value = call_in_thread(fn, timeout_s=timeout)
            else:
                value = call_in_thread(fn, timeout_s=timeout)
        except ChildGone as e:
            if e.timed_out:
                msg = f"{what} {e.why} ({limit})"
                title = "where it was when the timeout struck (most recent call first)"
            else:
                msg = f"{e.why} while {what}: the factory, a data callable or a recipe ended it"
                title = "where it died (most recent call first)"
            detail = f"--- {title} ---\n{_stacks(e.stacks)}" if e.stacks.strip() else ""
            raise StageError.at(spec, "build", msg, variant=variant, where=where, detail=detail) from None
        except RemoteError as e:
            raise StageError.at(
                spec,
                "build",
                f"unexpected error: {e.description}",
                variant=variant,
                where=where,
                detail=e.traceback_text,
            ) from None
        for line in lines:
            self.log(line)
        return value

    def baseline_runs(self, spec) -> None:
        """The in-memory baseline run on the declared example input and on the first evaluation
        batch, once, before any variant is built or any format saved: a spec whose model cannot
        take what ``model.inputs`` declares or what ``data`` gives fails every item with this one
        message, instead of each format calling the baseline unsupported."""

        def make():
            import torch

            if not (spec.model.factory or spec.model.hf):
                return None  # the baseline is a file made elsewhere: its own load item says how it runs
            if self.cache.enabled and self.cache.holds("built", build_key(spec, "baseline")):
                # an earlier session ran this run first and then built this very baseline (its key
                # covers the model, its weights and code, the declared inputs and the data)
                return None
            model = self.baseline_model(spec)
            batches = self.batches(spec)
            example = self.example(spec)
            for what, x in (
                ("the declared example input", example),
                ("the first evaluation batch", batches[0] if batches else None),
            ):
                if x is None:
                    continue
                try:
                    with torch.inference_mode():
                        run_batch(model, x, in_memory=True)
                except (BatchDimError, OutputError) as e:  # it ran: what it returned is the problem
                    where = (
                        spec.at(spec.variants["baseline"].line) if "baseline" in spec.variants else spec.where("model")
                    )
                    raise StageError.at(
                        spec,
                        "run",
                        str(e)
                        if isinstance(e, BatchDimError)
                        else f"the in-memory model's outputs cannot be checked: {e}",
                        variant="baseline",
                        where=where,
                    ) from e
                except Exception as e:
                    raise StageError.at(
                        spec,
                        "build",
                        baseline_input_problem(spec, what=what, given=x, sample=batches, error=describe_exc(e)),
                        variant="baseline",
                        where=spec.where("model"),
                    ) from e
            return None

        return self._memo("baseline-runs", spec, make)

    def built(self, t: Target) -> Built:
        """The variant built (once per session, reused across sessions by the cache). An
        ``artifact:`` variant is not built: it enters at reload, and this is its reloaded
        outputs and metric in the file's first format (what checks hold other files to)."""
        v = t.without_format()
        self.baseline_runs(t.spec)
        if v.made_elsewhere:
            return self._memo("built", v, lambda: self._reloaded(v))
        return self._memo("built", v, lambda: self._build(v))

    def _build(self, v: Target) -> Built:
        def fresh() -> Built:
            return self._build_fresh(v)

        def cached_or_fresh() -> Built:
            return build.from_cache(v, cache=self.cache, rebuild=fresh) or build.to_cache(v, fresh(), cache=self.cache)

        if v.is_baseline and self.cache.enabled:
            # every xdist worker that runs a variant of this spec needs its baseline: one builds
            # it, the others wait and take it from the cache (its build needs no other build)
            with once(v.key("built")):
                return cached_or_fresh()
        return cached_or_fresh()

    def _build_fresh(self, v: Target) -> Built:
        """:func:`build.build` in the build's own process (see :meth:`contained`), on inputs made
        here first, so what variants share is made once."""
        what = "building" + (f" ({', '.join(s.short() for s in v.variant.steps)})" if v.variant.steps else "")
        with self._stage("build", v, what):
            return self._build_fresh_timed(v)

    def _build_fresh_timed(self, v: Target) -> Built:
        spec = v.spec
        inputs = BuildInputs(
            data=self.data(spec),
            batches=self.batches(spec),
            example=self.example(spec) if v.variant.steps else None,
            labels=self.labels(spec),
            baseline=self.baseline_model(spec) if (spec.model.factory or spec.model.hf) else None,
            reference=None if v.is_baseline else self.built(v.baseline()).outputs,
        )
        build.import_step_libraries(v.variant)
        with heavy():  # under xdist, waits while another worker measures latency (deploycheck.quiet)
            if v.is_baseline and spec.model.hf is not None and v.variant.model is None and not v.variant.steps:
                # a Hugging Face baseline runs library code only, as baseline_runs already did here: its
                # evaluation shares the loaded model instead of receiving a pickled copy from a child
                return in_process(
                    lambda: build.build(v, inputs, log=lambda line: self.log(line)),
                    spec=spec,
                    what="unexpected error",
                    variant=v.vname,
                    where=v.where,
                )
            return self.contained(
                lambda: build.build(v, inputs, log=lambda line: self.log(line)),  # the child's log, in a child
                spec=spec,
                variant=v.vname,
                where=v.where,
                what=f"building variant {v.vname!r}",
            )

    def _reloaded(self, v: Target) -> Built:
        r = self.reload(v.with_format(v.variant.formats[0]))
        arch = baseline_arch(v.spec) if (v.spec.model.factory or v.spec.model.hf) else {}
        return Built(None, arch, [], 0.0, None, None, None, r.outputs, r.metric, v.variant.recipe)

    def built_if_ready(self, t: Target) -> Built | None:
        """The built variant if this session already built it successfully, else None (never builds)."""
        got = self._memo_store.get(t.without_format().key("built"))
        return got[1] if got and got[0] == "ok" else None

    def artifact(self, t: Target) -> Artifact:
        """The variant saved in ``t``'s format; an ``artifact:`` variant's own file, in place."""
        self.baseline_runs(t.spec)
        if t.made_elsewhere:
            return self._memo("artifact", t, lambda: save.made_elsewhere(t))

        def make() -> Artifact:
            # what the export needs first, outside the heavy section: a variant made elsewhere is
            # reloaded in a worker, whose latency measurement must not wait on this process
            built, example = self.built(t), self.example(t.spec)
            tokenizer_dir = self.tokenizer_dir(t.spec) if _causal_lm(t.spec) else None
            # one xdist worker saves a file the others also need (the baseline's, for their
            # ratios); they wait, then copy it from the cache (save.save looks there first)
            with (
                once(t.key("artifact")) if self.cache.enabled else contextlib.nullcontext(),
                heavy(),
                self._stage("export", t, f"saving the {t.fmt} artifact"),
            ):
                return save.save(
                    t, built, folder=self.variant_dir(t), example=example, cache=self.cache, tokenizer_dir=tokenizer_dir
                )

        return self._memo("artifact", t, make)

    def reload(self, t: Target) -> Reload:
        """The artifact loaded, timed and run in a fresh process, its outputs scored."""

        def make() -> Reload:
            art = self.artifact(t)
            files = self.inputs_files(t.spec)
            with self._stage("fresh", t, f"running the {t.fmt} artifact in a fresh process"):
                ran = self._run_fresh(t, art, files)
            baseline = None if t.is_baseline else self.built(t.baseline()).outputs
            # a file made elsewhere is held to the baseline; a built variant to its in-memory self
            reference = baseline if t.made_elsewhere else self.built(t).outputs
            return reload.finish(t, ran, reference=reference, baseline=baseline, labels=self.labels(t.spec))

        return self._memo("reload", t, make)

    def _run_fresh(self, t: Target, art, files):
        return reload.run(
            t,
            art,
            files=files,
            workdir=self.variant_dir(t),
            latency=reload.latency_plan(t, example=files["example"], baseline=self._baseline_ref(t)),
            generate=reload.generate_plan(
                t,
                prompts=files.get("prompts"),
                tokenizer_dir=self.tokenizer_dir(t.spec) if t.spec.generation is not None else None,
                baseline=self._baseline_ref(t),
            ),
            inputs_sha=self.inputs_sha(t.spec),
            cache=self.cache,
            pool=self.pool,
        )

    def _baseline_ref(self, t: Target) -> ArtifactRef | None:
        """The baseline's artifact in ``t``'s format, which latency is measured against (None for
        the baseline, or where it has none: the latency check says so)."""
        if t.is_baseline:
            return None
        try:
            return self.artifact(t.baseline()).ref()
        except (StageError, VariantUnsupported):
            return None

    def forget_measurement(self, t: Target) -> bool:
        """A timing verdict failed: drop the cached fresh-process result, so the next session
        measures again instead of serving the failing numbers (whatever the cache mode)."""
        got = self._memo_store.get(t.key("reload"))
        return bool(got and got[0] == "ok" and got[1].key and self.cache.drop_result(got[1].key))

    # --- model runs checks need -------------------------------------------------------------------

    def run_model(self, t: Target, name: str, inputs: Callable[[], list]) -> list:
        """The in-memory variant's named outputs on extra inputs (one mapping per batch), run once
        per session: ``name`` identifies the inputs (e.g. "semantic", "batch-invariance")."""

        def make():
            import torch

            xs = inputs()
            built = self.built(t)
            return self.cached_value(
                built.key,
                f"run:{name}",
                xs,
                lambda: _run_all(built.model, xs, torch),
            )

        return self._memo(f"run:{name}", t.without_format(), make)

    def run_each(self, t: Target, name: str, inputs: Callable[[], list]) -> list:
        """Like :meth:`run_model`, each batch on its own: its named outputs, or the error it raised
        as ``"Type: first line"`` (a declared size the in-memory model itself cannot take)."""

        def make():
            import torch

            xs = inputs()
            built = self.built(t)

            def compute() -> list:
                out: list = []
                for x in xs:
                    try:
                        out += _run_all(built.model, [x], torch)
                    except Exception as e:  # noqa: BLE001 - any error of the model's is its answer for this batch
                        out.append(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}")
                return out

            return self.cached_value(built.key, f"run-each:{name}", xs, compute)

        return self._memo(f"run-each:{name}", t.without_format(), make)

    def cached_value(self, built_key: str, name: str, inputs: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, or its value from an earlier session: keyed by the built variant's
        content hash, ``name`` and ``inputs`` by content (see :func:`deploycheck.cache.value_key`).
        A variant with no build key (a file made elsewhere) is computed every session."""
        if not built_key or not self.cache.enabled:
            return compute()
        key = value_key(built_key, name, inputs)
        got = self.cache.get_value(key)
        if got is not None:
            return got
        value = compute()
        self.cache.put_value(key, value)
        return value

    def embeddings(self, t: Target):
        """The variant's embeddings of the semantic triplets' texts, in memory (the baseline's
        when it is an artifact: its reloaded ones, from the file's own format)."""
        import torch

        name = t.spec.metric.output
        if t.made_elsewhere:
            return pick(self.reload(t.with_format(t.variant.formats[0])).extra_outputs, name)
        return torch.cat(
            [pick(o, name) for o in self.run_model(t, "semantic", lambda: self.semantic_batches(t.spec)[0])]
        )

    def divergence(self, t: Target, *, against: str = "baseline", by: str = "error") -> diverge.Divergence:
        """Where the variant departs from ``against`` ("baseline", or "in-memory" for the reloaded
        artifact against its own in-memory model), layer by layer (see :func:`diverge.compare`);
        ``by="kl"`` ranks a causal LM's blocks by next-token KL (:class:`diverge.Lens`), as the
        ``next_token`` and ``perplexity`` checks gate. Computed once per variant, format, reference
        and measure, and only when a check fails."""

        def make() -> diverge.Divergence:
            ref_t = t.baseline() if against == "baseline" else t
            probes = take(concat_inputs(self.batches(t.spec)), slice(0, diverge.PROBES))
            ref = None if ref_t.made_elsewhere else self.built(ref_t).model
            if ref is None:
                return diverge.compare(None, None, probes, fmt=t.fmt, against=against)
            var = None if t.made_elsewhere else self.built(t).model
            art = self.artifact(t) if t.fmt in diverge.EXPOSES_LAYERS else None
            lens = diverge.lm_lens(ref, probes) if by == "kl" else None
            return diverge.compare(ref, var, probes, fmt=t.fmt, artifact=art, against=against, lens=lens)

        return self._memo(f"divergence:{against}:{by}", t, make)


def _run_all(model, xs: list, torch) -> list:
    """Each batch of ``xs`` through the in-memory ``model``: its named outputs as float."""
    with heavy(), torch.inference_mode():
        return [{k: o.float() for k, o in run_batch(model, x).items()} for x in xs]
