"""The queue's rules, pure: no asyncio, sockets, textual or torch (tests/test_queue.py checks).

`state` holds JobState and its allowed transitions (the store enforces them); `resolve` is the one
place where a preset + overrides (+ a batch entry) becomes a spec and where a submit is checked.
"""
