"""Quality metrics. Direction (higher or lower is better) lives with each metric."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .loading import import_callable, search_dirs
from .registry import Registry


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[..., float]
    higher_is_better: bool
    needs_labels: bool
    #: each sample's value, whose mean is the metric (None: the metric is not a mean over samples):
    #: a paired interval then resamples these numbers, computed once, never the outputs
    per_sample: Callable[..., Any] | None = None
    #: compared with the baseline's outputs even where the data has labels (agreement)
    vs_baseline: bool = False

    def __call__(self, outputs, targets) -> float:
        return float(self.fn(outputs, targets))

    def samples(self, outputs, targets):
        """The per-sample values as float64 numpy (see ``per_sample``)."""
        assert self.per_sample is not None
        return self.per_sample(outputs, targets).detach().double().reshape(-1).numpy()


METRICS: Registry[Metric] = Registry("metric")


def _metric(
    name: str, *, higher: bool, labels: bool, per_sample: Callable[..., Any] | None = None, vs_baseline: bool = False
):
    def deco(fn):
        METRICS.register(name, Metric(name, fn, higher, labels, per_sample, vs_baseline))
        return fn

    return deco


def _rows(x):
    """(N, everything else) in float64: one row per sample."""
    return x.double().reshape(len(x), -1)


def _logits(outputs):
    if outputs.ndim != 2:
        raise ValueError(f"a classification metric needs outputs of shape (N, classes), got {tuple(outputs.shape)}")
    return outputs.float()


REGRESSION_HINT = "use metric mse, mae or r2"


def class_labels(outputs, targets, name: str):
    """The targets as class indices, or a ValueError when they are not labels of these outputs: a
    regression target must never be truncated to int and scored as classes."""
    t = targets.reshape(-1)
    if t.is_floating_point():
        whole = t == t.round()
        if not bool(whole.all()):
            raise ValueError(
                f"{name} needs integer class labels, but the targets are not whole numbers "
                f"(e.g. {t[~whole][0].item():g}): they look like values to predict; {REGRESSION_HINT}"
            )
    t = t.long()
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= outputs.shape[1]):
        raise ValueError(
            f"{name} needs class labels 0..{outputs.shape[1] - 1} (one per output column), but the "
            f"targets run from {int(t.min())} to {int(t.max())}: if they are values to predict, "
            f"{REGRESSION_HINT}"
        )
    return t


@_metric("accuracy", higher=True, labels=True)
def accuracy(outputs, targets):
    o = _logits(outputs)
    return (o.argmax(1) == class_labels(o, targets, "accuracy")).float().mean().item()


def top_k(outputs, targets, k: int = 5):
    o = _logits(outputs)
    t = class_labels(o, targets, f"top_{k}")
    k = min(k, o.shape[1])
    hits = (o.topk(k, dim=1).indices == t.view(-1, 1)).any(1)
    return hits.float().mean().item()


METRICS.register("top_k", Metric("top_k", top_k, True, True))


def _align(outputs, targets):
    o, t = outputs.float(), targets.float()
    if o.shape != t.shape and o.numel() == t.numel():
        t = t.reshape(o.shape)
    if o.shape != t.shape:
        raise ValueError(f"outputs {tuple(o.shape)} and targets {tuple(t.shape)} differ in shape")
    return o, t


def _mse_samples(outputs, targets):
    o, t = _align(outputs, targets)
    return ((_rows(o) - _rows(t)) ** 2).mean(1)


def _mae_samples(outputs, targets):
    o, t = _align(outputs, targets)
    return (_rows(o) - _rows(t)).abs().mean(1)


def _agreement_samples(outputs, targets):
    o, t = _align(outputs, targets)
    if o.ndim != 3:
        raise ValueError(f"token_agreement needs (batch, seq_len, vocab) logits, got {tuple(o.shape)}")
    return (o.argmax(-1) == t.argmax(-1)).double().mean(1)


def _cosine_samples(outputs, targets):
    import torch

    o, t = _align(outputs, targets)
    return torch.nn.functional.cosine_similarity(_rows(o), _rows(t), dim=1)


def _top1_samples(outputs, targets):
    o, t = _align(outputs, targets)
    if o.ndim != 2 or o.shape[1] < 2:
        raise ValueError(f"agreement needs classifier logits (batch, classes), got {tuple(o.shape)}")
    return (o.argmax(1) == t.argmax(1)).double()


@_metric("agreement", higher=True, labels=False, per_sample=_top1_samples, vs_baseline=True)
def agreement(outputs, targets):
    """Classifiers without labels: the fraction of samples whose predicted class (top-1) is the
    baseline's. A baseline reads 1 against itself; a variant's drop is the share of changed
    predictions (as MLPerf counts accuracy against the fp32 reference)."""
    return _top1_samples(outputs, targets).mean().item()


@_metric("mse", higher=False, labels=False, per_sample=_mse_samples)
def mse(outputs, targets):
    o, t = _align(outputs, targets)
    return ((o - t) ** 2).mean().item()


@_metric("mae", higher=False, labels=False, per_sample=_mae_samples)
def mae(outputs, targets):
    o, t = _align(outputs, targets)
    return (o - t).abs().mean().item()


@_metric("token_agreement", higher=True, labels=False, per_sample=_agreement_samples)
def token_agreement(outputs, targets):
    """Causal LMs: the fraction of positions (padding included) whose most likely next token is
    the baseline's; the ``next_token`` check counts real text only and adds the KL divergence."""
    o, t = _align(outputs, targets)
    if o.ndim != 3:
        raise ValueError(f"token_agreement needs (batch, seq_len, vocab) logits, got {tuple(o.shape)}")
    return (o.argmax(-1) == t.argmax(-1)).float().mean().item()


@_metric("r2", higher=True, labels=False)
def r2(outputs, targets):
    """Coefficient of determination, 1 - SS_res / SS_tot per output column, averaged over columns
    (scikit-learn's ``r2_score``): 1 is perfect, 0 is no better than predicting the mean."""
    o, t = _align(outputs, targets)
    o, t = o.double().reshape(len(o), -1), t.double().reshape(len(t), -1)
    ss_res = ((t - o) ** 2).sum(0)
    ss_tot = ((t - t.mean(0)) ** 2).sum(0)
    if bool((ss_tot == 0).any()):
        raise ValueError("r2 is undefined for targets that do not vary; use mse or mae")
    return (1 - ss_res / ss_tot).mean().item()


@_metric("cosine", higher=True, labels=False, per_sample=_cosine_samples)
def cosine(outputs, targets):
    import torch

    o, t = _align(outputs, targets)
    return torch.nn.functional.cosine_similarity(o.reshape(len(o), -1), t.reshape(len(t), -1), dim=1).mean().item()


def resolve(spec) -> Metric:
    """The spec's metric as a callable with its direction."""
    m = spec.metric
    if m.name == "callable":
        fn = import_callable(m.callable, search_dirs(spec))
        return Metric(m.callable, fn, bool(m.higher_is_better), False)
    if m.name == "top_k":
        k = m.k
        return Metric(f"top_{k}", lambda o, t: top_k(o, t, k), True, True)
    return METRICS.get(m.name)


def targets_for(metric: Metric, labels: Any, baseline_outputs: Any):
    """Labels when the data has them; otherwise the baseline's outputs (a fidelity metric). A
    metric defined against the baseline (agreement) always takes the baseline's outputs."""
    if metric.vs_baseline:
        return baseline_outputs
    if labels is not None:
        return labels
    if metric.needs_labels:
        raise ValueError(f"metric {metric.name!r} needs labels, but the data has none")
    return baseline_outputs
