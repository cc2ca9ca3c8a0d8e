"""The done/failed notification hook: its config, argv built without a shell, and a real daemon
running it (a hostile prompt stays one argument; a failing hook is logged and nothing else)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from cosmos_tui import paths
from cosmos_tui.daemon.notify import Hook, HookConfigError, hook_argv, job_fields, load_hook, run_hook

HOSTILE = "a cat'; touch PWNED; echo \"$(id)\" `id` {id} {{x}} \\"

RECORDER = """
import json, os, sys
out = sys.argv[1]
with open(out + ".tmp", "w") as f:
    json.dump({"argv": sys.argv[2:], "env": {k: v for k, v in os.environ.items() if k.startswith("COSMOS_TUI_JOB_")}}, f)
os.rename(out + ".tmp", out)
"""


def write_config(text: str) -> Path:
    path = Path(__import__("os").environ["COSMOS_TUI_CONFIG"]) / "daemon.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_no_config_no_hook_and_bad_configs_name_the_key(tmp_path):
    assert load_hook(tmp_path / "none.toml") is None
    bad = tmp_path / "daemon.toml"
    for text, match in [
        ('[notify]\ncommand = ["x", "{nope}"]\n', r"unknown field \{nope\}; the fields are \{id\}"),
        ('[notify]\ncommand = []\n', "command: empty"),
        ('[notify]\ncommand = "x"\non = ["started"]\n', "on: expected a list of done, failed"),
        ('[notify]\ncommand = "x"\ntimeout_s = 0\n', "timeout_s: expected a positive number"),
        ('[notify]\ncomand = "x"\n', "unknown key 'comand'"),
        ('[notify]\ncommand = "x \'unclosed"\n', "check its quotes"),
        ("[notify\n", "cannot be read as TOML"),
    ]:
        bad.write_text(text)
        with pytest.raises(HookConfigError, match=match):
            load_hook(bad)
    bad.write_text('[notify]\ncommand = "notify-send \'job {id}\' {state}"\n')
    assert load_hook(bad) == Hook(("notify-send", "job {id}", "{state}"))


def test_fields_are_substituted_inside_argv_items_never_resplit():
    hook = Hook(("cmd", "--title=job {id} {state}", "{prompt}", "{{literal}}", "{output}"))
    fields = job_fields({"id": 7, "state": "done", "prompt": HOSTILE, "outputs": [{"path": "/o/a b.mp4"}]})
    assert hook_argv(hook, fields) == ["cmd", "--title=job 7 done", HOSTILE, "{literal}", "/o/a b.mp4"]
    assert job_fields({"id": 1, "state": "failed", "error": "nul\0byte"})["error"] == "nul\ufffdbyte"


def test_a_hook_that_fails_or_hangs_is_logged_not_raised(tmp_path):
    logged: list[str] = []

    async def go():
        return (await run_hook([sys.executable, "-c", "import sys; print('bad'); sys.exit(3)"], {}, 30, logged.append),
                await run_hook([str(tmp_path / "missing")], {}, 30, logged.append),
                await run_hook([sys.executable, "-c", "import time; time.sleep(60)"], {}, 0.5, logged.append))

    assert asyncio.run(go()) == (3, None, None)
    assert "exited with code 3: bad" in logged[0]
    assert "could not start" in logged[1]
    assert "ran past 0.5 s and was killed" in logged[2]


def test_the_daemon_runs_the_hook_when_a_job_ends(daemon, tmp_path, wait_until):
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    record = tmp_path / "hook.json"
    write_config(f'[notify]\ncommand = {json.dumps([sys.executable, str(script), str(record), "{id}", "{state}", "{prompt}", "{output}"])}\n')
    out = tmp_path / "v.mp4"
    jid = daemon.submit({"prompt": HOSTILE, "save_path": str(out)})
    got = json.loads(wait_until(lambda: record.exists() and record.read_text(), what="the hook to run"))
    assert got["argv"] == [str(jid), "done", HOSTILE, str(out)]
    assert got["env"]["COSMOS_TUI_JOB_PROMPT"] == HOSTILE and got["env"]["COSMOS_TUI_JOB_STATE"] == "done"
    assert not (Path(paths.home()) / "PWNED").exists() and not Path("PWNED").exists()


def test_a_failing_hook_does_not_touch_the_job_or_the_queue(daemon, tmp_path, wait_until):
    write_config(f'[notify]\ncommand = {json.dumps([sys.executable, "-c", "import sys; sys.exit(5)"])}\n')
    a = daemon.submit({"prompt": "one", "save_path": str(tmp_path / "1.mp4")})
    b = daemon.submit({"prompt": "two", "save_path": str(tmp_path / "2.mp4")})
    # on two GPUs a and b run side by side and may end in either order: wait for both
    wait_until(lambda: {daemon.job(a)["state"], daemon.job(b)["state"]} == {"done"}, what="both jobs to run")
    assert daemon.job(a)["error"] is None and daemon.job(b)["error"] is None
    wait_until(lambda: "exited with code 5" in paths.daemon_log_path().read_text(), what="the hook failure logged")
