"""cosmos-tui's inference library: the Cosmos-Predict2 Video2World model, sampler and modes.

UI-free: nothing in engine/ imports textual (tests/test_import_hygiene.py enforces it).
"""
