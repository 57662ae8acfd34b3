"""Gates that are honest about noise: failed timings are measured again, absolute latency gates
know their machines, reduced precision is compared in its own steps, metric verdicts carry their
uncertainty. Decision logic is tested on synthetic inputs with known answers."""

from __future__ import annotations

import json

from conftest import make_spec

NEVER_FAST_ENOUGH = "  latency: {p50_ms: 1.0e-9}"  # one femtosecond: no machine meets it


def test_a_failed_latency_result_is_measured_again_next_run_not_served_from_the_cache(project):
    project.write(make_spec(thresholds=NEVER_FAST_ENOUGH))
    res = project.run()
    res.assert_outcomes(passed=4, failed=1)
    res.stdout.fnmatch_lines(["*check] latency failed for tiny::baseline::torchscript*",
                              "p50 * ms > p50_ms 1e-09 ms",
                              "  (not kept in the cache: the next run measures again)"])
    res = project.run()  # default --deploycheck-cache=all: the build and artifact are reused, the result is not
    res.assert_outcomes(passed=4, failed=1)
    res.stdout.fnmatch_lines(["deploycheck cache: reused 1 built variants, 1 artifacts, 0 fresh-process results (*)"])
    # a passing result is kept and reused
    project.write(make_spec(thresholds="  latency: {p50_ms: 1.0e9}"))
    project.run().assert_outcomes(passed=5)
    res = project.run()
    res.assert_outcomes(passed=5)
    res.stdout.fnmatch_lines(["deploycheck cache: reused 1 built variants, 1 artifacts, 1 fresh-process results (*)"])


def test_an_absolute_latency_ceiling_for_other_machines_is_reported_not_gated(project):
    project.write(make_spec(thresholds="  latency: {p50_ms: 1.0e-9, machines: {min_cores: 100000}}"))
    project.run("-k", "latency").assert_outcomes(passed=1)
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    rec = next(r for r in doc["records"] if r["check"] == "latency")
    assert "(not gated by p50_ms 1e-09 ms: set for other machines; this machine has " in rec["formula"]
    assert "CPUs, fewer than min_cores 100000)" in rec["formula"]
    # on a machine it names, the same ceiling gates
    project.write(make_spec(thresholds="  latency: {p50_ms: 1.0e-9, machines: {min_cores: 1}}"))
    project.run("-k", "latency").assert_outcomes(failed=1)


def test_machine_scope_matches_every_key_it_names():
    from deploycheck.machine import scope_mismatch
    from deploycheck.spec.model import MachineScope
    fp = {"arch": "x86_64", "effective_isa": "avx2", "cpu_count": 2, "cpu_model": "AMD EPYC 7763 64-Core"}
    assert scope_mismatch(MachineScope(), fp) is None
    assert scope_mismatch(MachineScope(isa=("avx2", "avx512"), min_cores=2, arch="x86_64", cpu_model="epyc"), fp) is None
    assert scope_mismatch(MachineScope(isa="avx512_vnni", min_cores=8), fp) == (
        "this machine has ISA avx2, not avx512_vnni; 2 CPUs, fewer than min_cores 8")
    assert scope_mismatch(MachineScope(cpu_model="Xeon"), fp) == (
        "this machine has CPU 'AMD EPYC 7763 64-Core', not 'Xeon'")


def test_a_misspelt_machine_scope_is_a_collection_error(project):
    project.write(make_spec(thresholds="  latency: {p95_ms: 5, machines: {isa: avx512vnni, cores: 8}}"))
    res = project.run("--collect-only")
    res.stdout.fnmatch_lines(["*tiny.yaml:*: thresholds.latency.machines.cores: unknown key*",
                              "*tiny.yaml:*: thresholds.latency.machines.isa: *avx512vnni*"])


BREAKS_ON_EXPORT = '''
import torch
from torch import nn


class BreaksOnExport(nn.Module):
    """Stands in for a conversion that corrupts the last layer: in memory the model is intact, in
    every exported file (torch.export, and ONNX through it) its outputs move by 0.5."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        y = self.inner(x)
        return y + 0.5 if torch.compiler.is_exporting() else y


def breaks_on_export(model, ctx):
    return BreaksOnExport(model)
'''


def test_a_static_int8_onnx_variant_passes_its_default_outputs_check_and_a_corrupted_one_fails(project):
    project.tester.makepyfile(convert=BREAKS_ON_EXPORT)
    variants = ("  baseline: {}\n  int8:\n    quantize: {method: static_int8}\n  broken:\n    steps:\n"
                "      - quantize: {method: static_int8}\n      - custom: {callable: 'convert:breaks_on_export'}")
    project.write(make_spec(factory="Deep", formats="[onnx]", variants=variants, thresholds="  size: {max_mb: 10}"))
    res = project.run("-k", "outputs and not baseline")
    res.assert_outcomes(passed=1, failed=1)
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    recs = {r["variant"]: r for r in doc["records"] if r["check"] == "outputs"}
    ok, bad = recs["int8"], recs["broken"]
    assert ok["status"] == "passed" and ok["threshold"]["precision"] == "int8" and ok["threshold"]["quant_steps"] == 2
    assert " elements outside within " in ok["formula"] and " int8 steps; limit 2 (one step " in ok["formula"]
    assert ok["details"]["steps"] <= 2
    res.stdout.fnmatch_lines(["*check] outputs failed for tiny::broken::onnx*",
                              "outputs of the reloaded onnx artifact differ from the in-memory variant (atol *, rtol 0)*",
                              "  off by * int8 steps; limit 2 (one step * = output range * / 255; default for int8 "
                              "variants)",
                              "*",
                              "  minimum required atol: 0.5* (at rtol 0)"])


def test_an_outputs_tolerance_that_is_set_is_used_as_given_for_reduced_precision_too():
    from deploycheck.numeric import FLOAT_ATOL, FLOAT_RTOL, output_tolerance
    t = output_tolerance(atol=None, rtol=None, precision="int8", quant_steps=2, span=51.0)
    assert (t.atol, t.rtol, t.step) == (0.4, 0.0, 0.2)
    assert t.describe(0.24) == ("within 1.2 int8 steps; limit 2 (one step 0.2 = output range 51 / 255; default for "
                                "int8 variants)")
    assert output_tolerance(atol=0.01, rtol=None, precision="int8", quant_steps=2, span=51.0).atol == 0.01
    assert output_tolerance(atol=None, rtol=0.1, precision="int8", quant_steps=2, span=51.0).atol == FLOAT_ATOL
    f = output_tolerance(atol=None, rtol=None, precision=None, quant_steps=2, span=51.0)
    assert (f.atol, f.rtol, f.steps) == (FLOAT_ATOL, FLOAT_RTOL, None)
    fp16 = output_tolerance(atol=None, rtol=None, precision="fp16", quant_steps=2, span=1024.0)
    assert fp16.atol == 2.0 and fp16.step == 1.0
    # constant outputs: no range, never a zero tolerance
    assert output_tolerance(atol=None, rtol=None, precision="int8", quant_steps=2, span=0.0).atol == FLOAT_ATOL


def test_the_minimum_required_atol_is_the_smallest_that_passes():
    import torch

    from deploycheck.numeric import compare_arrays
    a, e = torch.tensor([1.0, 2.5, -3.0]), torch.tensor([1.0, 2.0, -2.0])
    st = compare_arrays(a, e, atol=0.0, rtol=0.1)
    assert st["min_atol"] == 0.8  # |−3 − −2| − 0.1·2 = 0.8 beats |2.5 − 2| − 0.1·2 = 0.3
    assert compare_arrays(a, e, atol=0.8, rtol=0.1)["mismatched"] == 0
    assert compare_arrays(a, e, atol=0.79, rtol=0.1)["mismatched"] == 1
