"""Write a Hugging Face Llama folder (the example tiny LM) as a GGUF file, as llama.cpp's converter
does: F32 tensors under GGUF names, q/k rows permuted, and its tokenizer as a 'gpt2' vocabulary.
transformers reads it back to the same logits, which makes a known answer for the GGUF source."""

from __future__ import annotations

import json
import os

import numpy as np

_PARTS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
_NAMES["lm_head.weight"] = "output.weight"


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(src: str, dest: str) -> None:
    import gguf
    from safetensors.numpy import load_file

    with open(os.path.join(src, "config.json")) as fh:
        cfg = json.load(fh)
    with open(os.path.join(src, "tokenizer.json")) as fh:
        tok = json.load(fh)
    w = gguf.GGUFWriter(dest, "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(cfg["head_dim"])
    vocab = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])]
    special = {t["content"] for t in tok["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_types([3 if t in special else 1 for t in vocab])
    w.add_token_scores([0.0] * len(vocab))  # single characters: no merges
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    for k, v in load_file(os.path.join(src, "model.safetensors")).items():
        if k in _NAMES:
            name = _NAMES[k]
        else:
            _, _, layer, *rest = k.split(".")
            part = ".".join(rest[:-1])
            name = f"blk.{layer}.{_PARTS[part]}.weight"
            if part == "self_attn.q_proj":
                v = _permute(v, cfg["num_attention_heads"])
            elif part == "self_attn.k_proj":
                v = _permute(v, cfg["num_key_value_heads"])
        w.add_tensor(name, np.ascontiguousarray(v.astype(np.float32)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
