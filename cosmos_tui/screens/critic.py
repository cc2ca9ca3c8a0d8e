"""Best-of-N results: candidates ranked by the critic, each trial's answer and reasoning,
thumbnails, the winner, and where the HTML reports are."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from cosmos_tui.messages import CriticLoaded
from cosmos_tui.widgets.banner import ConnectionBanner
from cosmos_tui.widgets.contact_sheet import ContactSheet
from cosmos_tui.widgets.quiet import QuietBackground, QuietStatic


def ranking_path(job: dict) -> str | None:
    for out in job.get("outputs") or []:
        if out.get("kind") == "ranking" or str(out.get("path", "")).endswith("ranking.json"):
            return out["path"]
    save = (job.get("spec") or {}).get("save_path")
    if save:
        base = Path(save)
        if not base.is_absolute() and job.get("cwd"):
            base = Path(job["cwd"]) / base
        for cand in (base / "ranking.json", base.parent / "ranking.json"):
            if cand.is_file():
                return str(cand)
    return None


def _read_json(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_report(job: dict) -> dict:
    """The critic's verdicts for a job: from ranking.json and the per-video score JSONs when they
    exist, else from the critic events the daemon stored (scores and answers, no reasoning)."""
    path = ranking_path(job)
    doc = _read_json(path)
    candidates = []
    if doc and isinstance(doc.get("ranking"), list):
        for entry in doc["ranking"]:
            detail = _read_json(entry.get("json")) or {}
            candidates.append({**entry, "trials": detail.get("trials") or [], "counts": detail.get("counts")})
        return {"ranking_path": path, "winner": doc.get("winner"), "candidates": candidates}
    verdicts = [c for c in job.get("critic") or [] if c.get("trial") is None]
    verdicts.sort(key=lambda c: c.get("score") or 0, reverse=True)
    for i, c in enumerate(verdicts):
        answers = c.get("answers") or []
        candidates.append({"rank": i + 1, "video": c.get("video"), "score": c.get("score"), "json": None,
                           "html": None, "trials": [{"answer": a, "overview": "", "components": []}
                                                    for a in answers]})
    return {"ranking_path": None, "winner": candidates[0]["video"] if candidates else None,
            "candidates": candidates}


def answers_cell(trials: list[dict]) -> str:
    # "no" means "no anomaly": the good answer, shown as a check mark
    marks = {"no": "✓", "yes": "✗"}
    return "".join(marks.get((t.get("answer") or "").lower(), "?") for t in trials) or "-"


def trial_text(candidate: dict) -> Text:
    # rich Text, not markup: model output and file names may hold brackets
    out = Text()
    out.append(str(candidate.get("video")), style="bold")
    out.append(f"\nscore {candidate.get('score')}  report {candidate.get('html') or '-'}\n\n")
    for i, t in enumerate(candidate.get("trials") or [], 1):
        answer = t.get("answer") or "unparsed"
        verdict = {"no": "no anomaly", "yes": "anomaly"}.get(answer, answer)
        out.append(f"trial {i}", style="bold")
        out.append(f": {verdict}\n")
        if t.get("overview"):
            out.append(f"  {t['overview'].strip()}\n")
        for comp in t.get("components") or []:
            flag = "anomaly" if comp.get("anomaly") == "yes" else "ok"
            out.append(f"  - {comp.get('name')} ({flag}): {(comp.get('analysis') or '').strip()}\n")
        out.append("\n")
    return out


class CriticScreen(QuietBackground, Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("m", "play", "Play")]

    def __init__(self, job_id: int) -> None:
        super().__init__()
        self.job_id = job_id
        self.report: dict | None = None

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield QuietStatic(f"critic results of job {self.job_id} (loading…)", id="critic-head", markup=False)
        yield DataTable(cursor_type="row", id="critic-table")
        with VerticalScroll(id="critic-detail"):
            yield ContactSheet(frames=3, columns=3, id="critic-thumbs")
            yield QuietStatic(id="critic-trials", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label in (("rank", "#"), ("win", "★"), ("score", "Score"), ("answers", "Trials"), ("video", "Video")):
            table.add_column(label, key=key)
        self.load(dict(self.app.jobs.get(self.job_id) or {"id": self.job_id}))

    @work(thread=True, exclusive=True, exit_on_error=False, group="critic")
    def load(self, job: dict) -> None:
        self.post_message(CriticLoaded(self.job_id, load_report(job)))

    @on(CriticLoaded)
    def _loaded(self, message: CriticLoaded) -> None:
        message.stop()
        self.report = message.report
        table = self.query_one(DataTable)
        for c in message.report["candidates"]:
            winner = c.get("video") == message.report.get("winner")
            score = c.get("score")
            table.add_row(str(c.get("rank")), "★" if winner else "",
                          f"{score:.2f}" if isinstance(score, (int, float)) else "-",
                          answers_cell(c.get("trials") or []), os.path.basename(c.get("video") or "?"),
                          key=c.get("video") or str(c.get("rank")))
        n = len(message.report["candidates"])
        where = message.report.get("ranking_path") or "no ranking.json (scores from the daemon's events)"
        winner = message.report.get("winner")
        self.query_one("#critic-head", Static).update(
            f"job {self.job_id}: {n} candidate(s) · winner {os.path.basename(winner) if winner else '-'} · {where}"
            if n else f"job {self.job_id}: no critic results yet")
        if n:
            self._show(0)

    @on(DataTable.RowHighlighted, "#critic-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show(event.cursor_row)

    def _show(self, index: int) -> None:
        if not self.report or not (0 <= index < len(self.report["candidates"])):
            return
        cand = self.report["candidates"][index]
        self.query_one("#critic-trials", Static).update(trial_text(cand))
        video = cand.get("video")
        self.query_one(ContactSheet).show(video if video and os.path.isfile(video) else None)

    def selected_video(self) -> str | None:
        if not self.report or not self.report["candidates"]:
            return None
        row = self.query_one(DataTable).cursor_row
        return self.report["candidates"][row].get("video")

    def action_play(self) -> None:
        video = self.selected_video()
        if video and os.path.isfile(video):
            self.app.play_video(video)
        else:
            self.notify("no video file for this candidate", severity="warning")
