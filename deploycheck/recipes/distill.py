"""Knowledge distillation of the baseline (teacher) into a smaller student architecture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..schema import field, import_path_problem


@dataclass(frozen=True)
class DistillConfig:
    """Train ``student`` to match the teacher's softened outputs and the true labels."""

    recipe_name: ClassVar[str] = "distill"

    student: str = field(doc="import path 'module:callable' returning the student nn.Module")
    student_kwargs: dict[str, Any] = field(default_factory=dict, doc="keyword arguments for the student factory")
    temperature: float = field(4.0, gt=0, doc="softmax temperature of the soft targets")
    alpha: float = field(0.7, ge=0, le=1, doc="weight of the soft (teacher) loss; 1 - alpha weighs the hard loss")
    epochs: int = field(30, ge=1, doc="passes over the training split")
    batch_size: int = field(64, ge=1, doc="training batch size")
    lr: float = field(3e-3, gt=0, doc="learning rate")
    optimizer: Literal["adam", "adamw", "sgd"] = field("adam", doc="adam | adamw | sgd (momentum 0.9)")
    seed: int = field(0, doc="seed for initialisation and shuffling")

    def check(self) -> list[tuple[str, str]]:
        problem = import_path_problem(self.student)
        return [("student", problem)] if problem else []

    def short(self) -> str:
        return f"distill:{self.student.rpartition(':')[2]}"
