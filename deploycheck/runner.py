"""The pipeline: build -> serialize -> reload in a fresh process -> run. Results are cached per
session so each variant is built once and each artifact reloaded once, whatever items need them.

Failures are cached too: the first item that needs a failed stage shows the full error, later
ones the same one-line cause, instead of an avalanche of tracebacks.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import StageError
from .models import describe_exc


class VariantUnsupported(Exception):
    """A format cannot hold a variant; carries the exporter's reason."""

    def __init__(self, reason: str, *, spec: str, variant: str, fmt: str, where: str):
        self.reason, self.spec, self.variant, self.fmt, self.where = reason, spec, variant, fmt, where
        super().__init__(f"{fmt} cannot hold variant {variant!r}: {reason}")


@dataclass
class Built:
    model: Any
    arch: dict
    steps: list
    build_s: float
    params: int
    nonzero: int
    state_bytes: int
    outputs: Any               # in-memory outputs on the evaluation batches, concatenated
    metric: float
    recipe: str
    requires: tuple = ()       # libraries a loader must import first (they register the artifact's ops)
    settings: dict = field(default_factory=dict)  # torch settings a loader must apply (quantized engine)
    key: str = ""              # content hash (see cache.build_key)
    cached: bool = False


@dataclass
class Artifact:
    path: str
    manifest: dict
    size: int
    sha256: str
    save_s: float
    cached: bool = False


@dataclass
class Reload:
    result: dict
    outputs: Any
    metric: float | None
    seconds: float
    extra_outputs: Any = None  # outputs on the semantic triplets' texts, when the spec has them


@dataclass
class RecipeContext:
    """What recipe handlers may use: the data, the baseline, where to import from, and a logger."""

    spec: Any
    data: Any
    baseline: Any
    search: list
    log: Callable[[str], None]
    where: str
    example: Any


class Runner:
    def __init__(self, *, run_dir: str, log: Callable[[str], None] = lambda s: None, cache=None):
        from .cache import Cache
        from .isolation import WorkerPool
        self.cache = cache or Cache(None)
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.pool = WorkerPool(os.path.join(run_dir, "workers"))
        self.log = log
        self._cache: dict[tuple, Any] = {}

    def close(self) -> None:
        self.pool.close()

    def built_if_ready(self, spec, vname: str):
        """The built variant if this session already built it successfully, else None (never builds)."""
        got = self._cache.get(("built", spec.path, vname))
        return got[1] if got and got[0] == "ok" else None

    def _memo(self, key: tuple, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            try:
                self._cache[key] = ("ok", fn())
            except (StageError, VariantUnsupported) as e:
                self._cache[key] = ("err", e)
            except Exception as e:  # a bug or an unforeseen library error: still one clear, located message
                import traceback
                stage = {"artifact": "save", "reload": "load"}.get(key[0], "build")
                self._cache[key] = ("err", StageError(
                    stage, f"unexpected error: {describe_exc(e)}", spec=os.path.basename(key[1]), variant=key[2] if len(key) > 2 else None,
                    fmt=key[3] if len(key) > 3 else None, detail="".join(traceback.format_exception(e))[-3000:]))
        status, value = self._cache[key]
        if status == "err":
            raise value
        return value

    # --- data and example input --------------------------------------------------------------

    def data(self, spec):
        from . import data
        return self._memo(("data", spec.path), lambda: data.load(spec))

    def batches(self, spec):
        return self._memo(("batches", spec.path), lambda: self.data(spec).eval_batches(spec.data.batch_size))

    def labels(self, spec):
        import torch
        y = self.data(spec).y_test
        return None if y is None else torch.from_numpy(y)

    def example(self, spec):
        """The example input: real held-out samples when their shape fits, else seeded random values."""
        def make():
            import numpy as np
            import torch
            shape = tuple(spec.model.inputs.shape)
            dtype = getattr(torch, spec.model.inputs.dtype)
            x = self.data(spec).x_test
            if tuple(x.shape[1:]) == shape[1:] and len(x) >= shape[0]:
                return torch.from_numpy(np.ascontiguousarray(x[:shape[0]])).to(dtype)
            g = torch.Generator().manual_seed(0)
            if dtype.is_floating_point:
                return torch.randn(shape, generator=g).to(dtype)
            return torch.randint(0, 100, shape, generator=g, dtype=dtype)
        return self._memo(("example", spec.path), make)

    # --- build ----------------------------------------------------------------------------------

    def baseline_model(self, spec):
        from .models import build_baseline
        return self._memo(("baseline-model", spec.path), lambda: build_baseline(spec))

    def built(self, spec, vname: str) -> Built:
        return self._memo(("built", spec.path, vname), lambda: self._build(spec, vname))

    def _build(self, spec, vname: str) -> Built:
        from .cache import build_key
        from .models import search_dirs, use_search_path
        if spec.variant(vname).artifact is not None:
            return self._from_artifact(spec, vname)
        key = build_key(spec, vname)
        use_search_path(search_dirs(spec))  # a cached model unpickles the user's classes
        hit = self.cache.get_built(key)
        if hit is not None:
            meta, model, outputs = hit
            from .recipes import StepRecord
            return Built(model, meta["arch"], [StepRecord(**r) for r in meta["steps"]], meta["build_s"], meta["params"],
                         meta["nonzero"], meta["state_bytes"], outputs, meta["metric"], meta["recipe"],
                         tuple(meta["requires"]), meta.get("settings", {}), key, cached=True)
        built = self._build_fresh(spec, vname)
        built.key = key
        self.cache.put_built(key, {"arch": built.arch, "steps": [dataclasses.asdict(r) for r in built.steps],
                                   "build_s": built.build_s, "params": built.params, "nonzero": built.nonzero,
                                   "state_bytes": built.state_bytes, "metric": built.metric, "recipe": built.recipe,
                                   "requires": list(built.requires), "settings": built.settings}, built.model, built.outputs)
        return built

    def _from_artifact(self, spec, vname: str) -> Built:
        """An artifact variant is not built: its 'in-memory' outputs are the file's, run in the fresh process."""
        v = spec.variant(vname)
        r = self.reload(spec, vname, v.formats[0])
        from .models import baseline_arch
        arch = baseline_arch(spec) if (spec.model.factory or spec.model.hf) else {}
        return Built(None, arch, [], 0.0, None, None, None, r.outputs, r.metric, v.recipe)

    def _build_fresh(self, spec, vname: str) -> Built:
        import torch
        from . import recipes
        from .metrics import resolve, targets_for
        from .models import count_params, search_dirs, state_bytes
        from .models import build_variant_model, variant_arch
        v = spec.variant(vname)
        where = spec.at(v.line)
        base = self.baseline_model(spec) if (spec.model.factory or spec.model.hf) else None
        data = self.data(spec)
        t0 = time.perf_counter()
        if v.model is not None:  # the variant's own model (a QAT checkpoint, a student), then its recipes
            model = build_variant_model(spec, v)
        else:
            model = base if not v.steps else copy.deepcopy(base)
        arch = variant_arch(spec, v)
        records = []
        requires: list[str] = []
        settings: dict = {}
        for i, step in enumerate(v.steps):
            name = type(step).recipe_name
            ctx = RecipeContext(
                spec=spec, data=data, baseline=base, search=search_dirs(spec),
                log=lambda s, _n=name: self.log(f"{spec.name}::{vname} {_n}: {s}"), where=where,
                example=self.example(spec))
            ts = time.perf_counter()
            torch.manual_seed(0)
            try:
                out = recipes.apply(step, model, ctx)
            except StageError:
                raise
            except Exception as e:
                raise StageError("build", f"recipe step {i + 1} ({step.short()}) failed: {describe_exc(e)}",
                                 spec=spec.name, variant=vname, where=where) from e
            model, summary, details = out["model"], out["summary"], out.get("details", {})
            if "arch" in out:
                arch = out["arch"]
            requires += [r for r in out.get("requires", ()) if r not in requires]
            settings.update(out.get("settings", {}))
            p, nz = count_params(model)
            records.append(recipes.StepRecord(step.short(), summary, time.perf_counter() - ts, p, nz,
                                              state_bytes(model), details))
        _eval_mode(model)
        build_s = time.perf_counter() - t0
        outputs = self._run_in_memory(spec, vname, model)
        metric = resolve(spec)
        base_out = outputs if vname == "baseline" else self.built(spec, "baseline").outputs
        try:
            value = metric(outputs, targets_for(metric, self.labels(spec), base_out))
        except Exception as e:
            raise StageError("check", f"metric {metric.name!r} failed on the in-memory outputs: {describe_exc(e)}",
                             spec=spec.name, variant=vname, where=spec.where("metric")) from e
        p, nz = count_params(model)
        return Built(model, arch, records, build_s, p, nz, state_bytes(model), outputs, value, v.recipe, tuple(requires),
                     settings)

    def _run_in_memory(self, spec, vname, model):
        import torch
        outs = []
        try:
            with torch.inference_mode():
                for b in self.batches(spec):
                    o = model(b)
                    o = o[0] if isinstance(o, (tuple, list)) else o
                    if o.shape[:1] != b.shape[:1]:
                        raise StageError("run", f"the in-memory model returned shape {tuple(o.shape)} for a batch of "
                                         f"{b.shape[0]}: outputs must keep the batch dimension first",
                                         spec=spec.name, variant=vname, where=spec.at(spec.variant(vname).line))
                    outs.append(o.detach().float())
        except StageError:
            raise
        except Exception as e:
            raise StageError("run", f"the in-memory model failed on an evaluation batch of shape "
                             f"{tuple(b.shape)}: {describe_exc(e)}", spec=spec.name, variant=vname,
                             where=spec.at(spec.variant(vname).line)) from e
        return torch.cat(outs)

    # --- serialize ------------------------------------------------------------------------------

    def artifact(self, spec, vname: str, fspec) -> Artifact:
        return self._memo(("artifact", spec.path, vname, fspec.name), lambda: self._save(spec, vname, fspec))

    def variant_dir(self, spec, vname: str) -> str:
        d = os.path.join(self.run_dir, spec.name, vname)
        os.makedirs(d, exist_ok=True)
        return d

    def _user_artifact(self, spec, vname) -> Artifact:
        """A file made elsewhere: used in place, never copied or rewritten. Its manifest is the one
        deploycheck wrote next to it, if any, else its size and checksum (pinned by artifact.sha256)."""
        from .formats.integrity import read_manifest, sha256
        src = spec.variant(vname).artifact
        path = os.path.join(os.path.dirname(os.path.abspath(spec.path)), src.path)
        exists = os.path.isfile(path)
        actual = sha256(path) if exists else ""
        man = dict(read_manifest(path) or {}) if exists else {}
        if not man:
            man = {"format": src.format, "size": None, "sha256": actual, "made_elsewhere": True}
            from .formats import FORMATS
            from .models import baseline_arch
            if FORMATS.get(src.format)().needs_code(spec.variant(vname).formats[0].options) and \
                    (spec.model.factory or spec.model.hf):
                man.update(baseline_arch(spec))  # a state dict rebuilds the spec's architecture
        if src.sha256:
            man["sha256"] = src.sha256  # a pinned checksum: a changed file fails load as corrupted
            man["pinned_by"] = "artifact.sha256 in the spec"
        return Artifact(path, man, os.path.getsize(path) if exists else 0, actual, 0.0)

    def _save(self, spec, vname, fspec) -> Artifact:
        import warnings
        if spec.variant(vname).artifact is not None:
            return self._user_artifact(spec, vname)
        from .formats import FORMATS, Unsupported
        from .formats.integrity import write_manifest
        from .cache import artifact_key
        b = self.built(spec, vname)
        fmt = FORMATS.get(fspec.name)()
        path = os.path.join(self.variant_dir(spec, vname), f"model{fmt.suffix}")
        where = spec.at(fspec.line or spec.variant(vname).line)
        akey = artifact_key(b.key, fspec)
        man = self.cache.get_artifact(akey, path)
        if man is not None:
            return Artifact(path, man, man["size"], man["sha256"], 0.0, cached=True)
        tmp = os.path.join(os.path.dirname(path), f"partial-{os.path.basename(path)}")  # keeps the suffix
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                extra = fmt.save(b.model, tmp, example=self.example(spec), options=fspec.options, arch=b.arch)
        except Unsupported as e:
            raise VariantUnsupported(str(e), spec=spec.name, variant=vname, fmt=fspec.name, where=where) from e
        except Exception as e:
            raise StageError("save", f"saving as {fspec.name} failed: {describe_exc(e)}", spec=spec.name,
                             variant=vname, fmt=fspec.name, where=where) from e
        os.replace(tmp, path)
        man = write_manifest(path, fmt=fspec.name, input_shape=spec.model.inputs.shape,
                             input_dtype=spec.model.inputs.dtype, extra={**(extra or {}), "requires": list(b.requires), "torch_settings": b.settings})
        self.cache.put_artifact(akey, path, man)
        return Artifact(path, man, man["size"], man["sha256"], time.perf_counter() - t0)

    # --- reload in a fresh process --------------------------------------------------------------

    def reload(self, spec, vname: str, fspec) -> Reload:
        return self._memo(("reload", spec.path, vname, fspec.name), lambda: self._reload(spec, vname, fspec))

    def target(self, spec, vname, fspec) -> dict:
        art = self.artifact(spec, vname, fspec)
        return {"artifact": art.path, "format": fspec.name, "options": dataclasses.asdict(fspec.options),
                "manifest": art.manifest}

    def _reload(self, spec, vname, fspec) -> Reload:
        import torch
        from .formats import FORMATS
        from .models import search_dirs
        art = self.artifact(spec, vname, fspec)
        d = self.variant_dir(spec, vname)
        where = spec.at(fspec.line or spec.variant(vname).line)
        inputs = os.path.join(self.run_dir, spec.name, "eval_inputs.pt")
        example = os.path.join(self.run_dir, spec.name, "example_input.pt")
        # Written once per session, never reused from an earlier one: the run dir outlives sessions
        # and a changed spec (data, preprocessing) must not reload stale inputs.
        self._memo(("inputs-file", spec.path), lambda: (torch.save(self.batches(spec), inputs),
                                                        torch.save(self.example(spec), example)))
        fmt = FORMATS.get(fspec.name)()
        result = os.path.join(d, f"{fspec.name}.result.json")
        if os.path.exists(result):
            os.unlink(result)
        lat = spec.latency
        latency = {"example": example, "warmup": lat.warmup, "min_rounds": lat.min_rounds, "max_time_s": lat.max_time_s,
                   "round_ms": lat.round_ms, "confidence": lat.confidence, "batch_sizes": list(lat.batch_sizes)}
        th = spec.variant(vname).thresholds.latency
        if vname != "baseline":
            try:
                latency["baseline"] = self.target(spec, "baseline", fspec)
            except (StageError, VariantUnsupported):
                latency["baseline"] = None
            limits = [x for x in (th.max_ratio, 1 / th.min_speedup if th.min_speedup else None) if x]
            latency["ratio_limit"] = min(limits) if limits else None
        extra = None
        if spec.semantic is not None:
            extra = os.path.join(self.run_dir, spec.name, "semantic_inputs.pt")
            self._memo(("semantic-file", spec.path), lambda: torch.save(self.semantic_batches(spec)[0], extra))
        req = {"extra_inputs": extra, "target": self.target(spec, vname, fspec), "inputs": inputs, "outputs": os.path.join(d, f"{fspec.name}.outputs.pt"),
               "result": result, "threads": lat.threads, "latency": latency, "memory_mb": spec.isolation.memory_mb,
               "python_path": search_dirs(spec) if fmt.needs_code(fspec.options) else []}
        from .cache import result_key
        rkey = result_key(req, self._inputs_sha(spec))
        cached = self.cache.get_result(rkey, req["outputs"])
        if cached is not None:
            return self._finish_reload(spec, vname, fspec, {**cached, "cached": True}, req["outputs"], 0.0)
        out = self.pool.run(req, timeout_s=spec.isolation.timeout_s)
        ident = dict(spec=spec.name, variant=vname, fmt=fspec.name, where=where)
        if out.result is None:
            raise StageError("load", f"{out.death()} while loading and running {os.path.basename(art.path)}",
                             detail=_tail("process output", out.log_tail), **ident)
        r = out.result
        if not r.get("ok"):
            stage = "load" if r.get("stage") == "load" else "run"
            msg = f"{r.get('kind')}: {r.get('message', '').splitlines()[0] if r.get('message') else ''}"
            detail = r.get("traceback") or "\n".join(r.get("message", "").splitlines()[1:])
            raise StageError(stage, msg, detail=_tail("traceback", detail) if detail else "", **ident)
        self.cache.put_result(rkey, r, req["outputs"])
        return self._finish_reload(spec, vname, fspec, r, req["outputs"], out.seconds)

    def semantic_batches(self, spec):
        """The semantic triplets' texts, preprocessed like the data, in evaluation-sized batches."""
        def make():
            import torch
            from .data import load_triplets
            try:
                x, triplets = load_triplets(spec)
            except StageError:
                raise
            except Exception as e:
                raise StageError("build", f"cannot read semantic triplets: {describe_exc(e)}", spec=spec.name,
                                 where=spec.where("semantic")) from e
            t = torch.from_numpy(x)
            bs = spec.data.batch_size
            return [t[i:i + bs] for i in range(0, len(t), bs)], triplets
        return self._memo(("semantic", spec.path), make)

    def _inputs_sha(self, spec) -> str:
        def make():
            import hashlib
            h = hashlib.sha256()
            extra = self.semantic_batches(spec)[0] if spec.semantic is not None else []
            for b in self.batches(spec) + [self.example(spec)] + extra:
                h.update(str((tuple(b.shape), str(b.dtype))).encode())
                h.update(b.contiguous().numpy().tobytes())
            return h.hexdigest()
        return self._memo(("inputs-sha", spec.path), make)

    def _finish_reload(self, spec, vname, fspec, r: dict, outputs_path: str, seconds: float) -> Reload:
        import torch
        from .metrics import resolve, targets_for
        ident = dict(spec=spec.name, variant=vname, fmt=fspec.name, where=spec.at(fspec.line or spec.variant(vname).line))
        outputs = torch.cat(torch.load(outputs_path, weights_only=True))
        metric = resolve(spec)
        base = outputs if vname == "baseline" else self.built(spec, "baseline").outputs
        try:
            value = metric(outputs, targets_for(metric, self.labels(spec), base))
        except Exception as e:
            raise StageError("check", f"metric {metric.name!r} failed on the reloaded outputs: {describe_exc(e)}",
                             **ident) from e
        extra = None
        if os.path.exists(outputs_path + ".extra.pt"):
            extra = torch.cat(torch.load(outputs_path + ".extra.pt", weights_only=True))
        return Reload(r, outputs, value, seconds, extra)


def _eval_mode(model) -> None:
    try:
        model.eval()
    except NotImplementedError:  # pt2e-converted graphs are switched by the recipe itself
        pass


def _tail(title: str, text: str, n: int = 25) -> str:
    lines = [ln for ln in text.rstrip().splitlines()]
    if not lines:
        return ""
    return f"--- {title} (last {min(n, len(lines))} lines) ---\n" + "\n".join(lines[-n:])
