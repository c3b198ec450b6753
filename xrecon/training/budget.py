"""Training for a time budget: the trainer's clock, the plan (how many steps fit) and its corrections.

``train(time_budget="10min")`` starts with an unplanned number of steps. After the step-0 validation
and checkpoint (both timed), a short probe of steps inside the warm-up measures the step rate
(:meth:`Planner.after_step`, the hook the loop calls after every step); the steps are then fixed so
that training, validations, checkpoints and the run's end fit the budget, and the schedule runs to its
end within it. At each log row (:meth:`Planner.after_log`) the plan is corrected when the rate has
drifted so far that the run would end after the budget, or before 80 % of it.

Every timing of a run reads :func:`now`, so that a test can replace the clock (``budget._now``).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xrecon.errors import XreconError
from xrecon.training.config import TrainConfig

if TYPE_CHECKING:
    from xrecon.training.trainer import Session

__all__ = ["Budget", "Planner", "budget_to_run", "now"]

#: The trainer's clock, in seconds: every timing (the time budget, the log's seconds, the provenance's
#: training seconds) reads it through :func:`now`, so that a test can replace it with a fake clock.
_now = time.perf_counter

_PROBE = 10  # steps timed before a time budget's plan (at most warm-up + 1: the schedule's length does not matter)
_UNPLANNED = 10**9  # TrainConfig.steps of a budgeted run until its plan fixes them
_BUDGET_SAFETY = 0.95  # plan for this share of the budget left after the probe (steps vary in cost)


def now() -> float:
    """The trainer's clock (``time.perf_counter`` unless a test replaced ``_now``)."""
    return _now()


@dataclass
class Budget:
    """A time budget and its plan: what the probe measured and the steps it allows (saved for resuming)."""

    seconds: float
    max_steps: int | None = None  # steps= given with the budget: at most these
    fit_warmup: bool = False  # no warmup= given: the warm-up is a tenth of the planned steps, at most TrainConfig's
    planned: int | None = None  # the schedule's length, once the probe has measured the step rate
    probe_steps: int | None = None
    step_seconds: float | None = None  # a training step (reading its batch included)
    validation_seconds: float | None = None  # a validation (at step 0)
    checkpoint_seconds: float | None = None  # saving a checkpoint (at step 0)
    replans: list[list[int]] = field(default_factory=list)  # [step, steps]: corrections when the rate drifted

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Budget:
        return cls(**{k: ([list(r) for r in v] if k == "replans" else v) for k, v in d.items()})


def budget_to_run(budget: float | None, max_steps: int | None, cfg: TrainConfig, state: Mapping[str, Any] | None,
                  fit_warmup: bool = False) -> tuple[TrainConfig, Budget | None]:
    """(settings, plan) of a time budget: a new plan, or on resume the saved one (its planned steps are kept)."""
    if state is None:
        if budget is None:
            return cfg, None
        steps = _UNPLANNED if max_steps is None else max_steps
        return dataclasses.replace(cfg, steps=steps), Budget(budget, max_steps, fit_warmup=fit_warmup)
    saved = state.get("time_budget")
    if saved is None:
        if budget is not None:
            raise XreconError("resume continues with the saved settings: that run has no time budget (it trains for "
                              "its steps; steps= may be raised); start a new run in another file for a budget")
        return cfg, None
    plan = Budget.from_dict(saved)
    if budget is not None and budget != plan.seconds:
        raise XreconError(f"resume keeps the saved time budget ({plan.seconds:g} s) and its plan; time_budget="
                          f"{budget:g} s differs (steps= without time_budget may be raised to train longer)")
    if plan.planned is None and budget is None and cfg.steps != _UNPLANNED and cfg.steps != plan.max_steps:
        plan.planned = cfg.steps  # steps= given on resume before the probe had planned: they win
    return cfg, plan


class Planner:
    """A time budget's plan during one session of training (a no-op without a budget).

    It reads the session's settings, step, validation set and the seconds it spent validating and
    saving, and sets the session's ``cfg`` (steps and warm-up) when it plans.
    """

    def __init__(self, budget: Budget | None, t_start: float) -> None:
        self.budget, self.t_start = budget, t_start
        #: True until this session's probe has planned the steps
        self.planning = budget is not None and budget.planned is None
        self.plan_mark: tuple[int, float] | None = None  # (step, training clock) when this session planned
        self.marks: list[float] = []
        self.probe = 0

    def start(self, run: Session) -> None:
        """Before the first step of the session: the probe's length and its first mark."""
        b = self.budget
        if self.planning and b is not None and b.max_steps is not None and b.max_steps <= self.probe_length(run):
            self.plan(run, None, 0)  # steps= within the probe: nothing to time
            self.planning = False
        self.probe = self.probe_length(run) if self.planning else 0
        self.marks = [self.training_clock(run)] if self.planning else []

    def after_step(self, run: Session, bar: Any) -> None:
        """After every optimizer step: time the probe, and plan when it is done."""
        if not self.planning:
            return
        self.marks.append(self.training_clock(run))  # training time only: validations and checkpoints apart
        probe, marks = self.probe, self.marks
        if len(marks) == probe + 1:
            # the first step pays one-off costs: time the others when there are a few
            step_s = (marks[-1] - marks[1]) / (probe - 1) if probe >= 3 else (marks[-1] - marks[0]) / probe
            announce(bar, run, self, self.plan(run, step_s, probe))
            self.planning = False

    def after_log(self, run: Session, bar: Any) -> None:
        """After a log row: correct the plan when the step rate has drifted."""
        if (corrected := self.correct(run)) is not None:
            assert self.budget is not None
            bar.write(f"train: the step rate changed to {self.budget.step_seconds:.3g} s a step: "
                      f"{corrected} steps planned at step {run.p.step}")
            bar.total = corrected

    def probe_length(self, run: Session) -> int:
        """Steps to time in this session before a time budget's plan: within the warm-up (and the step
        after it, whose learning rate is the peak), so that the schedule's length does not matter yet."""
        cfg, b = run.cfg, self.budget
        n = _PROBE if cfg.schedule == "constant" else min(_PROBE, cfg.warmup + 1 - run.p.step)
        if b is not None and b.max_steps is not None:
            n = min(n, b.max_steps - run.p.step)
        return max(1, n)

    def plan(self, run: Session, step_seconds: float | None, probe_steps: int) -> int:
        """Fix the run's steps so that training, validations, checkpoints and the end fit the budget."""
        b, cfg, p = self.budget, run.cfg, run.p
        assert b is not None
        if step_seconds is None:  # steps= is no more than the probe: nothing to measure
            planned = b.max_steps if b.max_steps is not None else p.step
        else:
            per_step, end = self._costs(run, step_seconds)
            left = b.seconds - (now() - self.t_start)
            more = math.floor((left * _BUDGET_SAFETY - end) / max(per_step, 1e-9))
            planned = p.step + max(0, more)
            if b.max_steps is not None:
                planned = min(planned, b.max_steps)
        planned = max(planned, p.step, 1)
        b.planned, b.probe_steps, b.step_seconds = planned, probe_steps, step_seconds
        warmup = cfg.warmup
        if b.fit_warmup and cfg.schedule == "cosine":
            # a tenth of the schedule (at most the default's 100 steps), and no less than the steps taken
            warmup = min(cfg.warmup, max(planned // 10, p.step))
        run.cfg = dataclasses.replace(cfg, steps=planned, warmup=warmup)
        if self.plan_mark is None:
            self.plan_mark = (p.step, self.training_clock(run))
        return planned

    def _costs(self, run: Session, step_seconds: float) -> tuple[float, float]:
        """(seconds a step costs, validations and checkpoints included; seconds of the run's end)."""
        b, cfg = self.budget, run.cfg
        assert b is not None
        val = (b.validation_seconds or 0.0) if run.val_batches else 0.0
        save = b.checkpoint_seconds or 0.0
        # a validation may save the best; without validation every checkpoint saves the best too
        per_step = step_seconds + (val + save) / cfg.validation_interval if run.val_batches else step_seconds
        per_step += save * (1 if run.val_batches else 2) / cfg.checkpoint_interval
        return per_step, val + 2 * save  # the end: the final validation and the final best and last checkpoints

    @staticmethod
    def training_clock(run: Session) -> float:
        """The clock less this session's validations and checkpoints."""
        return now() - run.val_seconds - run.save_seconds

    def correct(self, run: Session) -> int | None:
        """Plan again when the step rate since this session's plan has drifted so far that the run
        would end after the budget, or before 80 % of it; the new steps, or None when kept."""
        b, p = self.budget, run.p
        if b is None or self.plan_mark is None or run.cfg.steps - p.step < _PROBE:
            return None
        step0, t0 = self.plan_mark
        if p.step - step0 < _PROBE:
            return None
        rate = (self.training_clock(run) - t0) / (p.step - step0)
        per_step, end = self._costs(run, rate)
        projected = now() - self.t_start + (run.cfg.steps - p.step) * per_step + end
        if 0.8 * b.seconds <= projected <= 1.02 * b.seconds:
            return None
        old = run.cfg.steps
        planned = self.plan(run, rate, b.probe_steps or 0)
        if planned == old:
            return None
        b.replans.append([p.step, planned])
        return planned


def announce(bar: Any, run: Session, planner: Planner, planned: int) -> None:
    """Say what a time budget's probe measured and how many steps it planned (warn when they are too few)."""
    b, cfg = planner.budget, run.cfg
    assert b is not None
    val = f", {b.validation_seconds:.3g} s a validation" if run.val_batches and b.validation_seconds else ""
    bar.write(f"train: time budget {b.seconds:g} s: {b.step_seconds:.3g} s a step{val}; "
              f"{planned} steps planned, warm-up {cfg.warmup}"
              + (f" (steps= at most {b.max_steps})" if b.max_steps is not None else ""))
    bar.total = planned
    bar.refresh()
    if cfg.schedule == "cosine" and planned <= cfg.warmup:
        warnings.warn(f"the time budget ({b.seconds:g} s) allows {planned} steps, no more than the warm-up "
                      f"({cfg.warmup}): the learning rate will not decay; give more time or a smaller warmup=",
                      UserWarning, stacklevel=4)
