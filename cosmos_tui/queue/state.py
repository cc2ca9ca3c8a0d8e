"""Job states and the transitions between them; the store refuses any other."""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED})

# a retry is a new job, so nothing leaves a terminal state
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED}),
    **{s: frozenset() for s in TERMINAL_STATES},
}


class TransitionError(ValueError):
    """A state change the rules don't allow (a bug in the caller, or a race it must handle)."""


def check_transition(job_id: int, old: str, new: str) -> None:
    try:
        a, b = JobState(old), JobState(new)
    except ValueError:
        raise TransitionError(f"job {job_id}: unknown job state {old!r} or {new!r}") from None
    if a is b:
        return  # re-storing the same state (e.g. with more detail) is not a transition
    if b not in TRANSITIONS[a]:
        raise TransitionError(f"job {job_id} is {a.value} and cannot become {b.value}")
