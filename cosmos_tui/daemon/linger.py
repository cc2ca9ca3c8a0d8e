"""systemd-logind: will the user's processes (the daemon, its engines) survive logout?"""

from __future__ import annotations

import getpass
import glob
import os
import subprocess
from pathlib import Path

LOGIND_CONF = [
    "/etc/systemd/logind.conf",
    "/etc/systemd/logind.conf.d/*.conf",
    "/run/systemd/logind.conf.d/*.conf",
    "/usr/lib/systemd/logind.conf.d/*.conf",
]


def _logind_setting(key: str, patterns: list[str]) -> str | None:
    value = None
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            try:
                lines = Path(path).read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                line = line.strip()
                if line.startswith((";", "#")) or "=" not in line:
                    continue
                k, _, v = line.partition("=")
                if k.strip() == key:
                    value = v.strip()  # later files and lines win, as in systemd
    return value


def linger_warning(user: str | None = None, conf_patterns: list[str] | None = None, linger: str | None = None) -> str | None:
    """A one-line warning when logind will kill this user's processes at logout, else None."""
    user = user or getpass.getuser()
    patterns = conf_patterns if conf_patterns is not None else LOGIND_CONF
    kill = (_logind_setting("KillUserProcesses", patterns) or "no").lower()
    if kill not in ("yes", "true", "1", "on"):
        return None
    excluded = (_logind_setting("KillExcludeUsers", patterns) or "root").split()
    if user in excluded:
        return None
    if linger is None:
        if os.path.exists(f"/var/lib/systemd/linger/{user}"):
            linger = "yes"
        else:
            try:
                out = subprocess.run(
                    ["loginctl", "show-user", user, "-p", "Linger", "--value"],
                    capture_output=True, text=True, timeout=3,
                )
                linger = out.stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                linger = ""
    if linger == "yes":
        return None
    return (
        f"systemd-logind kills {user}'s processes at logout (KillUserProcesses=yes) and lingering is off, "
        f"so queued jobs would stop when you log out; run `loginctl enable-linger {user}` once to fix it"
    )
