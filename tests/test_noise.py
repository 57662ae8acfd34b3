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
