"""Widgets of the workstation; each owns its DEFAULT_CSS, app-wide layout is in app.tcss."""
