"""`Job`: a job as clients see it, the one wire type of `job` / `jobs` answers.

The daemon builds it from a store row (`Job.from_row`) and sends `to_wire()`; clients read answers
with `Job.from_wire`, which fills fields an older daemon did not send and refuses answers that are
not a job at all (a protocol mismatch, said in one sentence rather than a KeyError later).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cosmos_tui.queue.state import JobState


class WireError(ValueError):
    """An answer that is not a job (wrong daemon version, or a bug)."""


@dataclass
class Job:
    id: int
    state: str
    spec: dict = field(default_factory=dict)
    mode: str = "video2world"
    preset: str | None = None
    prompt: str = ""
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    # progress, from the engine's events
    step: int | None = None
    total_steps: int | None = None
    chunk: int | None = None
    num_chunks: int | None = None
    generation: int | None = None
    num_generations: int | None = None
    sec_per_step: float | None = None
    # phase-aware (cosmos_tui/phase_timing.py): seconds until done, queued jobs' wait included; partial:
    # some phase of its model was never measured, so eta_s is a lower bound; phase: what it does now
    eta_s: float | None = None
    eta_partial: bool = False
    phase: dict | None = None
    peak_mem: int | None = None
    # where and how it runs
    gpus: list[int] = field(default_factory=list)
    gpus_wanted: int = 1
    engine_pid: int | None = None
    cwd: str | None = None
    priority: int = 0
    # how it ended
    error: str | None = None
    reason: str | None = None
    outputs: list[dict] = field(default_factory=list)  # [{path, kind}]
    critic: list[dict] = field(default_factory=list)
    # queue relations
    attempt_of: int | None = None
    held: bool = False
    after: int | None = None
    place: int | None = None  # 1-based place among queued jobs, None when not queued
    wait_reason: str | None = None
    log_path: str | None = None

    @classmethod
    def from_row(cls, row: dict, **extra: Any) -> "Job":
        """From a store row (plus what the store keeps elsewhere: outputs, critic, place...).
        A long video's and a best-of-N job's totals are known from the spec before the engine
        says them."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in row.items() if k in names}
        values.update(extra)
        values["held"] = bool(values.get("held"))
        job = cls(**values)
        if job.num_chunks is None and job.mode == "lvg":
            job.num_chunks = job.spec.get("num_chunks")
        if job.num_generations is None and job.mode == "bestofn":
            job.num_generations = job.spec.get("num_generations")
        return job

    def to_wire(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, data: Any) -> "Job":
        if not isinstance(data, dict) or not isinstance(data.get("id"), int) or not isinstance(data.get("state"), str):
            raise WireError(f"expected a job object with an id and a state, got {str(data)[:80]!r}; is the daemon "
                            f"of another cosmos-tui version? restart it with `cosmos-tui daemon stop` and try again")
        try:
            JobState(data["state"])
        except ValueError:
            raise WireError(f"job {data['id']}: unknown state {data['state']!r}; the daemon is of another "
                            f"cosmos-tui version: restart it") from None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def terminal(self) -> bool:
        return JobState(self.state).terminal

