"""Screens of the workstation: queue, job detail, GPUs, presets (and the editor), critic, help."""
