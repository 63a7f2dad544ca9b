"""The learning-rate schedule of a training run: a cosine with a linear warm-up, fixed by the run's step count and
stored in every checkpoint, so a resume continues the same curve; a resume with another step count re-plans the
rest explicitly (:meth:`Schedule.replan`)."""

from __future__ import annotations

import math
from typing import Any


class Schedule:
    """The learning rate of every step: cosine from ``lr`` to ``lr_min`` over the planned steps, with a linear
    warm-up; a JSON-able plan stored in each checkpoint.

    ``plans`` is a list of {"at", "steps", "ramp", "from_lr"}: from step ``at`` on, the LR follows the cosine of a run
    planned for ``steps`` steps, ``cos_N(t) = lr_min + (lr - lr_min) (1 + cos(pi t / N)) / 2``, joined to ``from_lr``
    by a linear ramp over its first ``ramp`` steps. The first plan ramps from 0 over the warm-up; a re-plan
    (``replan``: a resume with another step count) ramps from the LR the run was at.
    """

    def __init__(self, lr: float, lr_min: float, warmup: float, plans: list[dict[str, Any]]) -> None:
        self.lr, self.lr_min, self.warmup, self.plans = lr, lr_min, warmup, plans

    @classmethod
    def plan(cls, lr: float, lr_min: float, warmup: float, steps: int) -> Schedule:
        return cls(lr, lr_min, warmup, [{"at": 0, "steps": steps, "ramp": round(warmup * steps), "from_lr": 0.0}])

    @property
    def steps(self) -> int:
        """The step count the run is planned for now."""
        return int(self.plans[-1]["steps"])

    def cosine(self, step: int, total: int) -> float:
        return self.lr_min + (self.lr - self.lr_min) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    def lr_at(self, step: int) -> float:
        """The learning rate of the update of step ``step`` (0-based)."""
        plan = next(p for p in reversed(self.plans) if p["at"] <= step)
        target = self.cosine(step, plan["steps"])
        into = step - plan["at"]
        if into < plan["ramp"]:
            return plan["from_lr"] + (target - plan["from_lr"]) * (into + 1) / plan["ramp"]
        return target

    def replan(self, step: int, steps: int) -> str:
        """Re-plan the run, now at ``step``, for ``steps`` steps in all; returns the note to print.

        From the LR of the last step done the LR ramps linearly, over the warm-up length of a ``steps``-step run,
        onto the cosine a run planned for ``steps`` from the start would follow, and then follows that cosine.
        """
        if steps <= step:
            raise ValueError(f"--steps {steps}: the run is already at step {step}; give a larger step count")
        old = self.steps
        from_lr = self.lr_at(step - 1) if step > 0 else 0.0
        ramp = min(round(self.warmup * steps), steps - step)
        self.plans.append({"at": step, "steps": steps, "ramp": ramp, "from_lr": from_lr})
        if ramp:
            move = f"ramps over {ramp} steps from {from_lr:.3g} to {self.lr_at(step + ramp - 1):.3g} (step {step + ramp})"
        else:
            move = f"moves from {from_lr:.3g} to {self.lr_at(step):.3g}"
        return (
            f"note: --steps {steps} re-plans the schedule of this run (planned for {old} steps, now at step {step}): "
            f"the LR {move}, then follows the cosine of a {steps}-step run down to {self.lr_min:g} at step {steps}"
        )

    def to_json(self) -> dict[str, Any]:
        return {"kind": "cosine", "lr": self.lr, "lr_min": self.lr_min, "warmup": self.warmup, "plans": self.plans}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schedule:
        if data.get("kind") != "cosine":
            raise ValueError(f"unknown schedule kind {data.get('kind')!r}")
        return cls(float(data["lr"]), float(data["lr_min"]), float(data["warmup"]), list(data["plans"]))
