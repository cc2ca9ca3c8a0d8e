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


def parsed_trials(candidate: dict) -> int:
    """How many of the candidate's trials gave an answer the critic's parser could read."""
    counts = candidate.get("counts") or {}
    if isinstance(counts.get("parsed"), int):
        return counts["parsed"]
    return sum(1 for t in candidate.get("trials") or [] if (t.get("answer") or "").lower() in ("yes", "no"))


def winner_of(report: dict) -> str | None:
    """The winner to star, or None when there is none to trust: the best score is shared only by
    candidates none of whose trials could be parsed (every score 0.0, picked by seed order)."""
    cands = report.get("candidates") or []
    winner = report.get("winner")
    if not cands or winner is None:
        return None
    best = max((c.get("score") or 0) for c in cands)
    tied = [c for c in cands if (c.get("score") or 0) == best]
    if len(tied) > 1 and not any(parsed_trials(c) for c in tied):
        return None
    return winner


def printable(text: object) -> str:
    """Model output and file names as data: control characters (escapes a terminal would obey)
    become '?'; newlines and tabs stay."""
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in str(text))


def answers_cell(trials: list[dict]) -> str:
    # "no" means "no anomaly": the good answer, shown as a check mark
    marks = {"no": "✓", "yes": "✗"}
    return "".join(marks.get((t.get("answer") or "").lower(), "?") for t in trials) or "-"


def trial_text(candidate: dict) -> Text:
    # rich Text, not markup: model output and file names may hold brackets
    out = Text()
    out.append(printable(candidate.get("video")), style="bold")
    out.append(f"\nscore {candidate.get('score')}  report {printable(candidate.get('html') or '-')}\n\n")
    for i, t in enumerate(candidate.get("trials") or [], 1):
        answer = t.get("answer") or "unparsed"
        verdict = {"no": "no anomaly", "yes": "anomaly"}.get(answer, printable(answer))
        out.append(f"trial {i}", style="bold")
        out.append(f": {verdict}\n")
        if t.get("overview"):
            out.append(f"  {printable(t['overview'].strip())}\n")
        for comp in t.get("components") or []:
            flag = "anomaly" if comp.get("anomaly") == "yes" else "ok"
            out.append(f"  - {printable(comp.get('name'))} ({flag}): "
                       f"{printable((comp.get('analysis') or '').strip())}\n")
        if t.get("answer") is None:
            # no answer could be parsed: what the critic wrote is what there is to read
            raw = str(t.get("text") or "").strip()
            if raw:
                out.append("  the critic wrote (no answer could be parsed):\n", style="italic")
                out.append(printable(raw[:RAW_LIMIT]) + ("\n  …" if len(raw) > RAW_LIMIT else "") + "\n")
            else:
                out.append("  (the critic's text was not recorded)\n", style="italic")
        out.append("\n")
    return out


RAW_LIMIT = 4000  # characters of an unparsed trial shown; the HTML report has all of it


def copy_path(app, path: str | None, what: str) -> None:
    """Put a path on the clipboard with OSC 52 (through SSH and, with set-clipboard, tmux), and
    say which. Only a plain path goes out: one with control characters is shown, not sent."""
    if not path:
        app.notify(f"no {what} for this candidate", severity="warning")
        return
    if printable(path) != path or "\n" in path or "\t" in path:
        app.notify(f"{what} holds control characters; not copied: {printable(path)!r}",
                   severity="warning", markup=False)
        return
    app.copy_to_clipboard(path)
    app.notify(f"copied the {what} (OSC 52): {path}", markup=False)


class CriticScreen(QuietBackground, Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("enter", "open_candidate", "Open", show=True),
        Binding("m", "play", "Play"),
        Binding("y", "copy_report", "Copy report"),
    ]

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
        star = winner_of(message.report)
        for c in message.report["candidates"]:
            winner = star is not None and c.get("video") == star
            score = c.get("score")
            table.add_row(str(c.get("rank")), "★" if winner else "",
                          f"{score:.2f}" if isinstance(score, (int, float)) else "-",
                          answers_cell(c.get("trials") or []),
                          Text(printable(os.path.basename(c.get("video") or "?"))),  # data, not markup
                          key=c.get("video") or str(c.get("rank")))
        n = len(message.report["candidates"])
        where = message.report.get("ranking_path") or "no ranking.json (scores from the daemon's events)"
        if star:
            verdict = f"winner {os.path.basename(star)}"
        elif n:
            verdict = "no winner: no trial answer could be parsed"
        else:
            verdict = ""
        self.query_one("#critic-head", Static).update(
            printable(f"job {self.job_id}: {n} candidate(s) · {verdict} · {where}")
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

    def selected(self) -> dict | None:
        if not self.report or not self.report["candidates"]:
            return None
        row = self.query_one(DataTable).cursor_row
        return self.report["candidates"][row] if 0 <= row < len(self.report["candidates"]) else None

    def selected_video(self) -> str | None:
        cand = self.selected()
        return cand.get("video") if cand else None

    @on(DataTable.RowSelected, "#critic-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_candidate()

    def action_open_candidate(self) -> None:
        cand = self.selected()
        if cand is not None:
            self.app.push_screen(CandidateScreen(self.job_id, cand))

    def action_copy_report(self) -> None:
        cand = self.selected()
        copy_path(self.app, cand.get("html") if cand else None, "HTML report path")

    def action_play(self) -> None:
        video = self.selected_video()
        if video and os.path.isfile(video):
            self.app.play_video(video)
        else:
            self.notify("no video file for this candidate", severity="warning")


def candidate_paths(candidate: dict) -> str:
    exists = lambda p: "" if p and os.path.exists(p) else "  (not on disk)"  # noqa: E731
    lines = [f"{'video':>6}  {candidate.get('video') or '-'}{exists(candidate.get('video'))}"]
    for key, label in (("html", "report"), ("json", "scores")):
        if candidate.get(key):
            lines.append(f"{label:>6}  {candidate[key]}{exists(candidate[key])}")
    return printable("\n".join(lines))


class CandidateScreen(QuietBackground, Screen):
    """One candidate of a best-of-N job: where its video and reports are, its frames, every trial."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("m", "play", "Play"),
        Binding("y", "copy_report", "Copy report"),
        Binding("Y", "copy_video", "Copy video", key_display="Y"),
    ]

    def __init__(self, job_id: int, candidate: dict) -> None:
        super().__init__()
        self.job_id = job_id
        self.candidate = candidate

    def compose(self) -> ComposeResult:
        c = self.candidate
        score = c.get("score")
        yield ConnectionBanner()
        yield QuietStatic(printable(f"job {self.job_id} · candidate #{c.get('rank')} · "
                                    f"{os.path.basename(c.get('video') or '?')} · score "
                                    f"{f'{score:.2f}' if isinstance(score, (int, float)) else '-'}"),
                          id="candidate-head", markup=False)
        with VerticalScroll(id="candidate-detail"):
            yield QuietStatic(candidate_paths(c), id="candidate-paths", markup=False)
            yield ContactSheet(frames=6, columns=3, id="candidate-frames")
            yield QuietStatic(trial_text(c), id="candidate-trials", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        video = self.candidate.get("video")
        self.query_one(ContactSheet).show(video if video and os.path.isfile(video) else None)

    def action_play(self) -> None:
        video = self.candidate.get("video")
        if video and os.path.isfile(video):
            self.app.play_video(video)
        else:
            self.notify("no video file for this candidate", severity="warning")

    def action_copy_video(self) -> None:
        copy_path(self.app, self.candidate.get("video"), "video path")

    def action_copy_report(self) -> None:
        copy_path(self.app, self.candidate.get("html"), "HTML report path")
