"""An example recipe plug-in: multiply the model's outputs by a constant (a stand-in for a
team's own compression step). Its options are validated by deploycheck at collection."""

from __future__ import annotations

from dataclasses import dataclass

from deploycheck.recipes import StepResult
from deploycheck.schema import field


@dataclass(frozen=True)
class ScaleOutputs:
    """Multiply every output by ``factor`` (a plug-in recipe from an installed package)."""

    factor: float = field(1.0, gt=0, doc="the multiplier, > 0")

    def apply(self, model, ctx):
        import torch

        class Scaled(torch.nn.Module):
            def __init__(self, inner, factor):
                super().__init__()
                self.inner, self.factor = inner, factor

            def forward(self, x):
                return self.inner(x) * self.factor

        # A plain module would do too; a StepResult also says what the step did in the report.
        return StepResult(Scaled(model, self.factor), f"outputs scaled by {self.factor}", {"factor": self.factor})
