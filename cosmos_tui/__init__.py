"""The workstation: queue store, daemon, client, CLI and the Textual app.

Never imports torch at module top (tests/test_import_hygiene.py enforces it): the TUI must start in
a fraction of a second on a box whose GPU is busy.
"""
