"""A GGUF file as the model source (model.hf.gguf_file): dequantized once, in its own process, into
the cache; the same model as the Hugging Face folder it was written from.

The GGUF here is the example tiny LM written as llama.cpp writes Llama files (tests/gguf_tiny.py):
its float conversion must give the folder's logits and token ids exactly, a known answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="needs the hf extra: pip install 'deploycheck[hf]'")
pytest.importorskip("gguf", reason="needs the hf extra: pip install 'deploycheck[hf]'")
pytest.importorskip("accelerate", reason="needs the hf extra: pip install 'deploycheck[hf]'")

import torch  # noqa: E402
from gguf_tiny import write_gguf  # noqa: E402

from deploycheck import hf  # noqa: E402
from deploycheck.cache.store import Cache  # noqa: E402
from deploycheck.cli import main  # noqa: E402
from deploycheck.spec import parse_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "models" / "tiny_lm"
HELDOUT = ROOT / "specs" / "data" / "tiny_lm_heldout.txt"

SPEC = """\
deploycheck: 1
name: {name}
model:
  hf: {hf}
  inputs: {{shape: [1, 2, 64], dtype: int64, dynamic: {{0: batch, 2: {{name: seq, min: 4, max: 64}}}}}}
data:
  source: text:{root}/specs/data/tiny_lm_heldout.txt
  split: {{test_fraction: 1.0}}
  limit: 32
  preprocess: [{{tokenize: {{max_length: 64}}}}]
  batch_size: 16
metric: token_agreement
generation: {{prompts: {root}/specs/data/tiny_lm_prompts.txt, new_tokens: 4}}
formats: [export]
latency: {{warmup: 1, min_rounds: 5, max_time_s: 0.2}}
snapshot: {{enabled: false}}
thresholds:
  perplexity: {{max_relative_increase: 0.0}}
  next_token: {{min_top1: 1.0, max_mean_kl: 1.0e-6}}
variants:
  baseline: {{}}
"""


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    write_gguf(str(TINY), str(d / "tiny.gguf"))
    return d


@pytest.fixture
def fresh_memo(monkeypatch):
    """Each test converts as a new process would: no conversion remembered from an earlier test."""
    monkeypatch.setattr(hf, "_CONVERTED", {})
    monkeypatch.setattr(hf, "_CACHE", [])


def _logits(folder: str, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits


def test_the_conversion_is_the_model_the_gguf_was_written_from(gguf_dir, tmp_path, fresh_memo, monkeypatch):
    cache = Cache(str(tmp_path / "cache"))
    hf.use_cache(cache)
    folder = hf.converted_folder(str(gguf_dir / "tiny.gguf"), "causal-lm")
    assert folder.startswith(str(tmp_path / "cache" / "converted"))
    texts = HELDOUT.read_text().splitlines()[:20]
    ids = hf.token_ids(texts, path=folder)
    assert ids == hf.token_ids(texts, path=str(TINY))  # the tokenizer came from the file
    assert torch.equal(_logits(folder, ids[0]), _logits(str(TINY), ids[0]))  # bit for bit

    # a new process (nothing remembered) finds the cache's entry and converts nothing
    monkeypatch.setattr(hf, "_CONVERTED", {})

    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(subprocess, "run", no_conversion)
    assert hf.converted_folder(str(gguf_dir / "tiny.gguf"), "causal-lm") == folder
    assert cache.hits["converted"] == 1


def test_without_a_cache_the_conversion_lives_as_long_as_the_process(gguf_dir, fresh_memo):
    hf.use_cache(Cache(None))
    folder = hf.converted_folder(str(gguf_dir / "tiny.gguf"), "causal-lm")
    assert Path(folder, "model.safetensors").is_file() and Path(folder, "tokenizer.json").is_file()
    assert hf.converted_folder(str(gguf_dir / "tiny.gguf"), "causal-lm") == folder  # once per process


def test_the_key_is_the_file_content(gguf_dir, tmp_path):
    same = tmp_path / "copy.gguf"
    same.write_bytes((gguf_dir / "tiny.gguf").read_bytes())
    key = hf.gguf_key(str(gguf_dir / "tiny.gguf"), "causal-lm")
    assert hf.gguf_key(str(same), "causal-lm") == key  # where the file is does not matter
    assert hf.gguf_key(str(same), "encoder") != key
    data = bytearray(same.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    same.write_bytes(bytes(data))
    assert hf.gguf_key(str(same), "causal-lm") != key


def test_a_truncated_file_is_an_error_naming_it(gguf_dir, tmp_path, fresh_memo):
    cut = tmp_path / "cut.gguf"
    data = (gguf_dir / "tiny.gguf").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    hf.use_cache(Cache(str(tmp_path / "cache")))
    with pytest.raises(ValueError) as e:
        hf.converted_folder(str(cut), "causal-lm")
    assert str(e.value).startswith(f"cannot convert GGUF file {cut} to float weights: ")
    assert not list((tmp_path / "cache").glob("converted/*/*"))  # nothing half-written is published


def test_validate_names_a_missing_or_foreign_gguf_file(gguf_dir, tmp_path, capsys):
    spec = tmp_path / "lm.yaml"
    hf_src = f"{{path: {gguf_dir}, gguf_file: tiny.ggfu, task: causal-lm}}"
    spec.write_text(SPEC.format(name="lm", hf=hf_src, root=ROOT))
    assert main(["validate", str(spec)]) == 1
    out = capsys.readouterr().out
    assert (
        f"lm.yaml:3: model.hf.gguf_file: GGUF file not found: {gguf_dir}/tiny.ggfu (that folder holds: tiny.gguf)"
        in (out)
    )
    (tmp_path / "model.gguf").write_bytes(b"PK\x03\x04 a zip file, renamed")
    spec.write_text(SPEC.format(name="lm", hf="{path: ., gguf_file: model.gguf, task: causal-lm}", root=ROOT))
    assert main(["validate", str(spec)]) == 1
    out = capsys.readouterr().out
    assert (
        f"model.hf.gguf_file: {tmp_path}/model.gguf is not a GGUF file: it starts with b'PK\\x03\\x04', not b'GGUF'"
        in (out)
    )
    spec.write_text(
        SPEC.format(name="lm", hf=f"{{path: {gguf_dir}, gguf_file: tiny.gguf, task: causal-lm}}", root=ROOT)
    )
    assert main(["validate", str(spec)]) == 0
    assert parse_file(str(spec)).model.hf.gguf_file == "tiny.gguf"


def test_a_gguf_spec_gates_as_the_folder_it_came_from(gguf_dir, tmp_path):
    """Two specs, one per source, in one session: every LM check passes on both, with the same
    perplexity to the last digit (the folder's logits and token ids, through the export artifact)."""
    (tmp_path / "folder.yaml").write_text(
        SPEC.format(name="folder", hf=f"{{path: {TINY}, task: causal-lm}}", root=ROOT)
    )
    hf_src = f"{{path: {gguf_dir}, gguf_file: tiny.gguf, task: causal-lm}}"
    (tmp_path / "gguf.yaml").write_text(SPEC.format(name="gguf", hf=hf_src, root=ROOT))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "folder.yaml", "gguf.yaml", "-q"]
    cmd += [f"--deploycheck-run-dir={tmp_path / 'run'}", f"--deploycheck-cache-dir={tmp_path / 'cache'}"]
    cmd += ["-k", "not latency and not generation_speed and not generation_memory"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    doc = json.loads((tmp_path / "reports" / "deploycheck.json").read_text())
    recs = {(r["spec"], r["check"]): r for r in doc["records"] if r["format"] == "export"}
    for check in ("load", "outputs", "perplexity", "next_token", "generation", "tokenizer"):
        assert recs[("gguf", check)]["status"] == "passed", recs[("gguf", check)]
    ppl = recs[("gguf", "perplexity")]["details"]["perplexity"]
    assert ppl == recs[("folder", "perplexity")]["details"]["perplexity"] and ppl > 1.0
    assert len(list((tmp_path / "cache").glob("converted/*/*/model.safetensors"))) == 1


def test_every_weight_file_of_a_folder_is_in_the_key(tmp_path):
    """A sharded checkpoint's second shard (or a .bin checkpoint) is part of what identifies the
    model: changing it must change the key (only model.safetensors was hashed before)."""
    from types import SimpleNamespace

    for name, data in {
        "config.json": b"{}",
        "tokenizer.json": b"{}",
        "model-00001-of-00002.safetensors": b"one",
        "model-00002-of-00002.safetensors": b"two",
        "model.safetensors.index.json": b"{}",
        "pytorch_model.bin": b"bin",
        "README.md": b"not part of the model",
    }.items():
        (tmp_path / name).write_bytes(data)
    src = SimpleNamespace(path=".", gguf_file=None, task="causal-lm")
    before = hf.source_files(src, str(tmp_path))
    assert sorted(before) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "tokenizer.json",
    ]
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"TWO")
    after = hf.source_files(src, str(tmp_path))
    assert after["model-00002-of-00002.safetensors"] != before["model-00002-of-00002.safetensors"]
    assert {k: v for k, v in after.items() if k != "model-00002-of-00002.safetensors"} == {
        k: v for k, v in before.items() if k != "model-00002-of-00002.safetensors"
    }
