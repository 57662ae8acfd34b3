"""Hugging Face transformer encoders from a local folder or an installed package, offline.

Text models take one int64 tensor of shape (batch, 2, seq_len): token ids and attention mask
stacked. One tensor keeps every format (torch.export, TorchScript, ONNX, state dicts) and the
fresh-process runner on the same single-input path as any other model; the ``tokenize``
preprocessing step produces it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from .digest import sha256
from .schema import TOKENIZER_FILES

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: weights come from disk
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # progress bars would garble pytest's output
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _folder(path: str, base: str) -> str:
    """``package:NAME[/sub/dir]`` (a folder inside an installed package) or a folder relative to ``base``."""
    if path.startswith("package:"):
        name, _, sub = path[len("package:") :].partition("/")
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"package {name!r} is not installed (it should carry the model files)")
        return os.path.join(list(spec.submodule_search_locations)[0], sub)
    return os.path.normpath(os.path.join(base, path))


def resolve(path: str, base: str, gguf_file: str | None = None) -> str:
    """The model folder ``path`` names (see :func:`_folder`), checked: a Hugging Face folder has a
    config.json; with ``gguf_file``, the path of that GGUF file inside it (checked by its magic)."""
    folder = _folder(path, base)
    if gguf_file is None:
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model folder")
        return folder
    f = os.path.join(folder, gguf_file)
    if not os.path.isfile(f):
        near = sorted(n for n in os.listdir(folder) if n.endswith(".gguf")) if os.path.isdir(folder) else []
        raise FileNotFoundError(
            f"GGUF file not found: {f}" + (f" (that folder holds: {', '.join(near)})" if near else "")
        )
    with open(f, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{f} is not a GGUF file: it starts with {magic!r}, not b'GGUF'")
    return f


#: packages whose versions decide what a GGUF file converts to (part of the converted entry's key)
GGUF_LIBRARIES = ("transformers", "gguf", "torch")


def gguf_key(gguf_path: str, task: str) -> str:
    """The converted weights' exact key: the GGUF file's sha256, the task and the converting libraries' versions."""
    import hashlib
    import importlib.metadata as md
    import json

    versions: dict[str, str | None] = {}
    for lib in GGUF_LIBRARIES:
        try:
            versions[lib] = md.version(lib)
        except md.PackageNotFoundError:
            versions[lib] = None
    blob = json.dumps({"gguf": sha256(gguf_path), "task": task, "versions": versions}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def convert_gguf(gguf_path: str, out: str, task: str) -> None:
    """Dequantize a GGUF file into a float32 Hugging Face folder in ``out``: config, safetensors
    weights and the tokenizer the file carries (chat template included). transformers refuses to
    save a model it loaded from GGUF, so the weights move into a model built from the same config."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(gguf_path)
    cls = AutoModelForCausalLM if task == "causal-lm" else AutoModel
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    loaded = cls.from_pretrained(folder, gguf_file=name, dtype=torch.float32, local_files_only=True)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = cls.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    del loaded
    plain.save_pretrained(out)
    tok.save_pretrained(out)


_CONVERTED: dict[str, str] = {}  # key -> folder, this process's conversions (the cache's, or its own)
_CACHE: list[Any] = []  # the session's Cache, where conversions are kept between runs (see use_cache)


def use_cache(cache) -> None:
    """Keep converted models in this cache (the session's; conversions are not repeated across runs)."""
    _CACHE[:] = [cache]


def converted_folder(gguf_path: str, task: str) -> str:
    """The float Hugging Face folder of a GGUF file: from the cache when it holds one (whole and
    checksummed), else converted now (once per process) and published to the cache; with the cache
    off, kept in a temporary folder for this process's life."""
    import shutil
    import tempfile

    key = gguf_key(gguf_path, task)
    if key in _CONVERTED and os.path.isfile(os.path.join(_CONVERTED[key], "config.json")):
        return _CONVERTED[key]
    cache = _CACHE[0] if _CACHE and _CACHE[0].enabled else None
    found = cache.get_folder("converted", key) if cache is not None else None
    if found is None:
        own = tempfile.mkdtemp(prefix="deploycheck-gguf-")
        # in a child process: dequantizing holds the model twice, and this process keeps neither copy
        # (-I: only installed packages are importable, as in deploycheck's workers)
        import subprocess
        import sys

        p = subprocess.run(
            [sys.executable, "-I", "-m", "deploycheck.hf", gguf_path, own, task], capture_output=True, text=True
        )
        if p.returncode != 0:
            shutil.rmtree(own, ignore_errors=True)
            lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
            why = next((ln[len(_FAILED) :] for ln in reversed(lines) if ln.startswith(_FAILED)), None)
            why = why or (lines[-1] if lines else f"the converting process exited with status {p.returncode}")
            raise ValueError(f"cannot convert GGUF file {gguf_path} to float weights: {why}")
        if cache is not None:

            def publish(tmp: str) -> None:
                for n in os.listdir(own):
                    shutil.copy2(os.path.join(own, n), os.path.join(tmp, n))

            found = cache.put_folder("converted", key, publish)
        if found is None:
            import atexit

            atexit.register(shutil.rmtree, own, True)
            found = own
        else:
            shutil.rmtree(own, ignore_errors=True)
    _CONVERTED[key] = found
    return found


def model_folder(hf, base: str) -> str:
    """The Hugging Face folder a spec's ``model.hf`` stands for: its folder, or its GGUF file's
    float conversion (:func:`converted_folder`)."""
    found = resolve(hf.path, base, hf.gguf_file)
    return converted_folder(found, hf.task) if hf.gguf_file else found


def source_files(hf, base: str) -> dict[str, Any]:
    """What identifies a spec's Hugging Face model, by content and without converting anything:
    the config, tokenizer and every weight file of a folder, or the GGUF file with the converting
    libraries' versions. Unreadable sources give None (the build stage reports why)."""
    try:
        found = resolve(hf.path, base, hf.gguf_file)
    except (OSError, ValueError):
        return {"missing": hf.path}
    if hf.gguf_file:
        return {"gguf": gguf_key(found, hf.task)}
    names = sorted(
        n
        for n in os.listdir(found)
        if n == "config.json"
        or n in TOKENIZER_FILES
        or n.endswith((".safetensors", ".bin", ".pt", ".pth", ".index.json"))
    )
    return {n: sha256(os.path.join(found, n)) for n in names}


class TextEncoder(torch.nn.Module):
    """A transformer encoder with pooling: (batch, 2, seq_len) int64 -> (batch, hidden) embeddings."""

    def __init__(self, path: str, pooling: str = "mean", normalize: bool = False):
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
        self.pooling, self.normalize = pooling, normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            emb = hidden[:, 0]
        elif self.pooling == "max":
            emb = (hidden - (1 - m) * 1e4).amax(1)
        else:
            emb = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb


def encoder(path: str, pooling: str = "mean", normalize: bool = False) -> TextEncoder:
    """Factory used for rebuilding (safetensors / HDF5 formats): ``path`` is already resolved."""
    return TextEncoder(path, pooling, normalize).eval()


class CausalLM(torch.nn.Module):
    """A causal language model behind the one-tensor interface: (batch, 2, seq_len) int64 token ids
    and attention mask -> (batch, seq_len, vocab) float32 next-token logits. Declare the sequence
    length dynamic in ``model.inputs`` (``dynamic: {2: {name: seq, min, max}}``) so one artifact
    serves the held-out texts (and a full-recompute generation). Generation with a KV cache goes
    through a second program saved next to export and onnx artifacts (:mod:`deploycheck.formats.lm_kv`;
    docs/language-models.md, "Generation with a KV cache")."""

    def __init__(self, path: str):
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.lm = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, attn_implementation="eager", dtype=torch.float32
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        return self.lm(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()


def causal_lm(path: str) -> CausalLM:
    """Factory used for rebuilding (safetensors / HDF5 formats): ``path`` is already resolved."""
    return CausalLM(path).eval()


def tokenizer_files(path: str) -> dict[str, str]:
    """name -> sha256 of the tokenizer files in a model folder (none: an error, the LM needs one)."""
    import hashlib

    out = {}
    for name in TOKENIZER_FILES:
        f = os.path.join(path, name)
        if os.path.isfile(f):
            with open(f, "rb") as fh:
                out[name] = hashlib.sha256(fh.read()).hexdigest()
    if not out:
        raise FileNotFoundError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return out


def token_ids(texts, *, path: str) -> list[list[int]]:
    """Each text's token ids (special tokens such as BOS included, no padding), with the tokenizer in ``path``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return [list(map(int, tok(str(t))["input_ids"])) for t in texts]


def prompt_ids(prompts, *, path: str) -> tuple[list[str], list[list[int]]]:
    """Each prompt's text and token ids with the tokenizer in ``path``: a text as :func:`token_ids`
    makes them; chat messages rendered by the tokenizer's chat template, generation prompt added
    (the text shown is the rendered one)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    texts, ids = [], []
    for i, p in enumerate(prompts, 1):
        if isinstance(p, str):
            texts.append(p)
            ids.append(list(map(int, tok(p)["input_ids"])))
            continue
        if not getattr(tok, "chat_template", None):
            raise ValueError(
                f"prompt {i} is chat messages, but the tokenizer in {path} has no chat template "
                "(tokenizer_config.json: chat_template): write plain prompts, or use the model's own tokenizer files"
            )
        texts.append(str(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False)))
        got: Any = tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True)
        ids.append(list(map(int, got["input_ids"] if hasattr(got, "keys") else got)))  # a BatchEncoding in 5.x
    return texts, ids


def decoder(path: str):
    """ids -> text with the tokenizer in ``path`` (special tokens kept, so nothing is hidden),
    loaded on the first call: a verdict with nothing to show never imports ``transformers``."""
    import functools

    @functools.cache
    def tok():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)

    return lambda ids: tok().decode(list(ids), skip_special_tokens=False)


def tokenize(texts, *, path: str, max_length: int):
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    enc = tok(
        [str(t) for t in texts], padding="max_length", truncation=True, max_length=max_length, return_tensors="np"
    )
    return np.stack([enc["input_ids"], enc["attention_mask"]], axis=1).astype(np.int64)


_FAILED = "deploycheck-gguf-failed: "


def _main(argv: list[str]) -> int:
    """``python -m deploycheck.hf GGUF OUT TASK``: :func:`convert_gguf` in its own process."""
    import sys

    try:
        convert_gguf(argv[0], argv[1], argv[2])
    except Exception as e:  # noqa: BLE001 - whatever the parser raised, said in one line
        print(_FAILED + f"{type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
