"""The command line against a daemon with the fake engine."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cosmos_tui.cli import app, parse_sets

runner = CliRunner()


def cli(*args, ok=True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_parse_sets_keeps_text_fields_as_text():
    got = parse_sets(["prompt=a cat, 3 legs", "seed=3", "guidance=7.5", "resolution=720",
                      "disable_guardrail=true", "save_path=out/1.mp4", "fps=10"])
    assert got == {"prompt": "a cat, 3 legs", "seed": 3, "guidance": 7.5, "resolution": "720",
                   "disable_guardrail": True, "save_path": "out/1.mp4", "fps": 10}


def test_help_has_examples():
    out = cli("--help").output
    assert "cosmos-tui submit tiny-cpu --set" in out and "logs -f" in out
    assert "--batch" in cli("submit", "--help").output


@pytest.mark.parametrize("args", [(), ("submit",), ("edit",), ("presets", "new")])
def test_help_examples_are_printed_as_written_one_per_line(args):
    # click rewraps a help paragraph into one block unless it starts with "\b": the examples must keep
    # their lines, so that each can be copied as a whole command
    from cosmos_tui import cli as cli_module

    out = cli(*args, "--help").output
    doc = cli_module.EXAMPLES if not args else {
        ("submit",): cli_module.submit, ("edit",): cli_module.edit, ("presets", "new"): cli_module.presets_new,
    }[args].__doc__
    examples = [ln.strip() for ln in doc.splitlines() if ln.strip().startswith("cosmos-tui ")]
    assert examples
    shown = {ln.strip() for ln in out.splitlines()}
    assert [e for e in examples if e not in shown] == []
    assert "<list[str]>" not in out  # metavars say what to type


def test_submit_ls_show_logs(daemon, tmp_path, wait_until):
    out = tmp_path / "cli.mp4"
    res = cli("submit", "tiny-cpu", "--set", "prompt=a kite", "--set", f"save_path={out}", "--set", "seed=3", "--json")
    (jid,) = json.loads(res.output)
    wait_until(lambda: daemon.job(jid)["state"] == "done", what="the job to finish")
    jobs = json.loads(cli("ls", "--json").output)
    assert [j["id"] for j in jobs] == [jid] and jobs[0]["spec"]["seed"] == 3
    assert jobs[0]["spec"]["model_size"] == "tiny"  # from the preset
    shown = json.loads(cli("show", jid, "--json").output)
    assert shown["state"] == "done" and shown["outputs"][0]["path"] == str(out)
    text = cli("show", jid).output
    assert f"job {jid}  done" in text and str(out) in text
    assert "a kite" in cli("ls").output
    assert "step" in cli("logs", jid).output
    assert "finished" in cli("logs", "-f", jid).output  # returns because the job has ended


def test_batch_file_makes_one_job_per_entry(daemon, tmp_path, monkeypatch):
    daemon.pause()
    batch = tmp_path / "batch.json"
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    (tmp_path / "b.jpg").write_bytes(b"jpeg")
    monkeypatch.chdir(tmp_path)
    batch.write_text(json.dumps([
        {"input_video": "a.jpg", "prompt": "first", "output_video": "o1.mp4"},
        {"input_video": "b.jpg", "prompt": "second", "output_video": "o2.mp4"},
    ]))
    ids = json.loads(cli("submit", "--batch", batch, "--set", "seed=9", "--json").output)
    assert len(ids) == 2
    jobs = {j["id"]: j for j in daemon.jobs()}
    assert [jobs[i]["spec"]["input_path"] for i in ids] == ["a.jpg", "b.jpg"]
    assert [jobs[i]["spec"]["save_path"] for i in ids] == ["o1.mp4", "o2.mp4"]
    assert {jobs[i]["spec"]["seed"] for i in ids} == {9}


def test_errors_are_one_line_and_exit_nonzero(daemon, tmp_path):
    # one exit code for user mistakes: 2
    res = cli("submit", "no-such-preset", ok=False)
    assert res.exit_code == 2 and "preset 'no-such-preset' not found" in res.output
    res = cli("submit", "--set", "colour=red", ok=False)
    assert res.exit_code == 2 and "colour: unknown key" in res.output
    res = cli("cancel", 77, ok=False)
    assert res.exit_code == 2 and "job 77 does not exist" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    res = cli("submit", "--batch", bad, ok=False)
    assert res.exit_code == 2 and "not valid JSON" in res.output


def test_pause_move_cancel_retry_resume(daemon, wait_until):
    cli("pause")
    assert daemon.queue()["paused"] is True
    a, b = (json.loads(cli("submit", "--set", f"prompt={p}", "--json").output)[0] for p in "ab")
    assert "number 1" in cli("move", b, "--up").output
    assert [j["id"] for j in daemon.jobs(["queued"])] == [b, a]
    cli("move", b, "--to", 2)
    assert [j["id"] for j in daemon.jobs(["queued"])] == [a, b]
    assert cli("move", b, ok=False).exit_code == 2
    cli("cancel", a)
    assert daemon.job(a)["state"] == "cancelled"
    out = cli("retry", a).output
    new = int(out.split()[1])
    assert daemon.job(new)["attempt_of"] == a
    cli("resume")
    wait_until(lambda: daemon.job(new)["state"] == "done" and daemon.job(b)["state"] == "done",
               what="the queue to drain")


def test_daemon_status_and_stop(daemon, wait_until):
    out = cli("daemon", "status").output
    assert "daemon running" in out and "GPUs: 2 (demo)" in out
    cli("daemon", "stop")
    from cosmos_tui.client import Client, DaemonNotRunning

    def gone():
        try:
            Client().ping()
            return False
        except DaemonNotRunning:
            return True

    wait_until(gone, what="the daemon to stop")
    res = cli("daemon", "status", ok=False)
    assert res.exit_code == 1 and "no daemon is running" in res.output


def test_presets_list_show_new(tmp_path):
    assert "tiny-cpu" in cli("presets", "list").output
    out = cli("presets", "show", "tiny-cpu").output
    assert 'model_size = "tiny"' in out and '"num_steps": 4' in out
    out = cli("presets", "new", "my-tiny", "--from", "tiny-cpu", "--set", "seed=5", "-d", "mine").output
    assert "my-tiny.toml" in out
    assert '"seed": 5' in cli("presets", "show", "my-tiny").output
    res = cli("presets", "new", "bad", "--set", "fps=11", ok=False)
    assert res.exit_code == 2 and "fps" in res.output

    # "new" does not write over the user's own preset by accident; --replace does, on purpose
    res = cli("presets", "new", "my-tiny", "--from", "2b-720p16", ok=False)
    assert res.exit_code == 2 and "'my-tiny' is already your preset" in res.output and "--replace" in res.output
    assert '"seed": 5' in cli("presets", "show", "my-tiny").output
    cli("presets", "new", "my-tiny", "--from", "tiny-cpu", "--set", "seed=6", "--replace")
    assert '"seed": 6' in cli("presets", "show", "my-tiny").output
    # a user preset may take a shipped one's name; the output says it now hides the shipped one
    assert "in place of the shipped tiny-cpu" in cli("presets", "new", "tiny-cpu", "--from", "tiny-cpu").output


@pytest.mark.slow
def test_run_in_the_foreground_with_the_tiny_profile(tmp_path, monkeypatch):
    pytest.importorskip("engine.modes.video2world")
    monkeypatch.chdir(tmp_path)
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 40, 90)).save(tmp_path / "in.png")
    res = cli("run", "tiny-cpu", "--set", "num_steps=2", "--set", "input_path=in.png",
              "--set", "save_path=out/t.mp4")
    assert (tmp_path / "out" / "t.mp4").is_file()
    assert "t.mp4" in res.output


def test_a_bad_batch_entry_does_not_refuse_the_good_ones(daemon, tmp_path, monkeypatch):
    daemon.pause()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps([
        {"input_video": "a.jpg", "prompt": "good", "output_video": "o1.mp4"},
        {"prompt": "no input", "output_video": "o2.mp4"},
        {"input_video": "missing.jpg", "prompt": "bad path", "output_video": "o3.mp4"},
        {"input_video": "a.jpg", "prompt": "also good", "seed": 2**32, "output_video": "o4.mp4"},
    ]))
    res = cli("submit", "--batch", batch, ok=False)
    assert res.exit_code == 2
    assert "item 2: input_video: missing" in res.output
    assert "item 3: input_path: 'missing.jpg' does not exist" in res.output
    assert "item 4: seed" in res.output
    assert [j["prompt"] for j in daemon.jobs()] == ["good"]


def test_an_existing_output_is_refused_at_submit(daemon, tmp_path):
    daemon.pause()
    (tmp_path / "keep.mp4").write_bytes(b"precious")
    res = cli("submit", "--set", "prompt=a kite", "--set", f"save_path={tmp_path / 'keep.mp4'}", ok=False)
    assert res.exit_code == 2 and "overwrite=true" in res.output
    cli("submit", "--set", "prompt=a kite", "--set", f"save_path={tmp_path / 'keep.mp4'}", "--set", "overwrite=true")


def test_prompts_are_text_not_markup_or_escape_sequences(daemon):
    daemon.pause()
    hostile = "[/red] \x1b]52;c;aGk=\x07 \x1b]0;title\x07 \x9b2J end"
    jid = daemon.submit({"prompt": hostile})
    ls = cli("ls").output
    show = cli("show", jid).output
    for out in (ls, show):
        assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "[/red]" in ls and "[/red]" in show
    res = cli("submit", "--set", "prompt=caf\udce9")  # argv bytes that are not UTF-8
    (new,) = [int(w) for w in res.output.split() if w.isdigit()]
    assert daemon.job(new)["prompt"] == "caf\ufffd"


def test_hold_release_and_after(daemon, wait_until):
    cli("pause")
    a = json.loads(cli("submit", "--set", "prompt=a", "--json").output)[0]
    b = json.loads(cli("submit", "--set", "prompt=b", "--after", a, "--json").output)[0]
    c = json.loads(cli("submit", "--set", "prompt=c", "--json").output)[0]
    assert daemon.job(b)["after"] == a
    assert "held" in cli("hold", c).output
    cli("resume")
    wait_until(lambda: daemon.job(b)["state"] == "done", what="b to run after a")
    assert daemon.job(a)["finished"] <= daemon.job(b)["started"]
    held = daemon.job(c)
    assert held["state"] == "queued" and held["held"] and "held" in held["wait_reason"]
    cli("release", c)
    wait_until(lambda: daemon.job(c)["state"] == "done", what="c to run once released")
    assert cli("hold", c, ok=False).exit_code == 2  # only a queued job can be held

    cli("pause")
    d = json.loads(cli("submit", "--set", "prompt=d", "--json").output)[0]
    e = json.loads(cli("submit", "--set", "prompt=e", "--after", d, "--json").output)[0]
    f = json.loads(cli("submit", "--set", "prompt=f", "--after", e, "--json").output)[0]
    cli("cancel", d)
    cli("resume")
    wait_until(lambda: daemon.job(f)["state"] == "failed", what="the chain of dependents to fail")
    assert daemon.job(e)["reason"] == daemon.job(f)["reason"] == "dependency"
    assert cli("submit", "--set", "prompt=g", "--after", d, ok=False).exit_code == 2


def test_submit_takes_the_seed_scripts_own_flags(daemon, tmp_path, monkeypatch):
    daemon.pause()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jpg").write_bytes(b"jpeg")
    res = cli("submit", "--model_size", "2B", "--input_path", "x.jpg", "--prompt", "a red kite", "--num_gpus", "1",
              "--offload_text_encoder", "--seed", "7", "--json")
    (jid,) = json.loads(res.output)
    spec = daemon.job(jid)["spec"]
    assert (spec["model_size"], spec["input_path"], spec["prompt"], spec["seed"]) == ("2B", "x.jpg", "a red kite", 7)
    assert spec["offload_text_encoder"] is True
    # with a preset: the flags given override it, the rest is the preset's; --set wins over a flag
    res = cli("submit", "tiny-cpu", "--prompt", "from flags", "--seed", "1", "--set", "seed=2", "--json")
    spec = daemon.job(json.loads(res.output)[0])["spec"]
    assert spec["model_size"] == "tiny" and spec["prompt"] == "from flags" and spec["seed"] == 2
    bad = cli("submit", "--model_size", "3B", ok=False)
    assert bad.exit_code == 2 and "model_size" in bad.output and "invalid choice" in bad.output
    assert cli("submit", "--no_such_flag", "1", ok=False).exit_code == 2


def test_remove_clean_and_edit(daemon, tmp_path, wait_until):
    daemon.pause()
    a = daemon.submit({"prompt": "a", "save_path": str(tmp_path / "a.mp4")})
    b = daemon.submit({"prompt": "b", "save_path": str(tmp_path / "b.mp4")})
    res = cli("edit", a, "--set", "num_steps=2", "--set", "prompt=edited")
    assert "num_steps=2" in res.output and daemon.job(a)["prompt"] == "edited"
    bad = cli("edit", a, "--set", "num_steps=0", ok=False)
    assert bad.exit_code == 2 and "num_steps" in bad.output
    bad = cli("remove", a, ok=False)
    assert bad.exit_code == 2 and f"job {a} is queued; only finished jobs can be removed" in bad.output
    cli("cancel", b)
    daemon.resume()
    wait_until(lambda: daemon.job(a)["state"] == "done", what="job a to finish")
    bad = cli("edit", a, "--set", "seed=1", ok=False)
    assert bad.exit_code == 2 and "only a queued job can be edited" in bad.output
    assert cli("clean", "--failed-only").output.strip() == "nothing to clean"
    assert cli("remove", b).output.strip() == f"removed job(s) {b}"
    assert cli("clean").output.strip() == f"removed job(s) {a}"
    assert daemon.jobs() == [] and (tmp_path / "a.mp4").is_file()  # the video stays


def test_a_batch_file_that_is_not_utf8_is_named_not_a_traceback(tmp_path):
    import typer

    from cosmos_tui.cli import batch_items

    batch = tmp_path / "b.json"
    batch.write_bytes(b'[{"prompt": "caf\xe9"}]')
    with pytest.raises(typer.BadParameter, match=r"b.json is not UTF-8 text \(byte 0xe9 at offset 16\)"):
        batch_items(batch)


def test_demo_is_queued_beside_a_video_the_queue_did_not_write(daemon, tmp_path, monkeypatch):
    # ./go queues the demo when the queue has no demo job; a cleared queue (or another user of the checkout)
    # leaves output/tiny.mp4 behind, which must neither stop the demo nor be overwritten by it
    from cosmos_tui import cli as cli_module

    opened = []
    monkeypatch.setattr(cli_module, "_open_tui", lambda: opened.append(True))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "tiny.mp4").write_bytes(b"an earlier demo's video")
    out = cli("demo").output
    assert opened == [True] and "queued job" in out
    (job,) = daemon.jobs()
    assert job["spec"]["save_path"] == f"output/tiny-job{job['id']}.mp4"
    assert (tmp_path / "output" / "tiny.mp4").read_bytes() == b"an earlier demo's video"
