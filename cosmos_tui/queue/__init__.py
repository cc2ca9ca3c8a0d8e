"""The queue's rules, pure: no asyncio, sockets, textual or torch (tests/test_queue.py checks).

`state` holds JobState and its allowed transitions (the store enforces them); `resolve` is the one
place where a preset + overrides (+ a batch entry) becomes a spec and where a submit or an edit is
checked; `job` is the Job wire type; `core` decides: `plan` (what starts where), `apply` (what an
engine event does to a job), wait reasons, what remove/clean/edit may touch, and the model key.
"""
