"""Critic answers: parse, score, report. Pure Python, no torch.

The critic (Cosmos-Reason1, engine/models/reason.py) answers each trial in a tagged template:
a think block with an overview and one block per scene component (name, analysis, anomaly Yes|No),
then `<answer>Yes|No</answer>` for "does the video contain anomalies or artifacts?".

Only the answer tag decides the score. The rest of the template feeds the HTML report and is parsed
leniently, because model text is arbitrary: a tiny random model emits garbage and even the real one
writes `&` or `<` inside an analysis, which breaks a strict XML parse. Nothing in here may raise on
any input text.

score = (# trials answering "no", i.e. no anomaly) / (# trials with a parsable answer), 0.0 if none.
The percentage in file names is the floor of score*100 as three digits (2 of 3 -> "066").
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

ANSWER_RE = re.compile(r"<answer>\s*(yes|no)\s*</answer>", re.IGNORECASE)
_OVERVIEW_RE = re.compile(r"<overview>(.*?)</overview>", re.IGNORECASE | re.DOTALL)
_COMPONENT_RE = re.compile(
    r"<component\s+name\s*=\s*(?:\"([^\"]*)\"|'([^']*)')\s*>(.*?)</component>", re.IGNORECASE | re.DOTALL
)
_ANALYSIS_RE = re.compile(r"<analysis>(.*?)</analysis>", re.IGNORECASE | re.DOTALL)
_ANOMALY_RE = re.compile(r"<anomaly>\s*(.*?)\s*</anomaly>", re.IGNORECASE | re.DOTALL)


@dataclass
class Component:
    name: str
    analysis: str
    anomaly: str  # "yes" | "no" | whatever the model wrote, lower-cased and stripped

    @property
    def is_anomaly(self) -> bool:
        return self.anomaly == "yes"


@dataclass
class Trial:
    text: str
    answer: str | None = None  # "yes" | "no" | None when no answer tag parsed
    overview: str = ""
    components: list[Component] = field(default_factory=list)
    detail: str = "failed"  # how the think block was read: "xml" | "regex" | "failed"

    @property
    def parsed(self) -> bool:
        return self.answer is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["parsed"] = self.parsed
        return d


def _as_text(text: object) -> str:
    if isinstance(text, str):
        return text
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", errors="replace")
    return "" if text is None else str(text)


def parse_answer(text: str) -> str | None:
    # The first tag counts, as in the reference's scoring: scores must be comparable with its numbers,
    # even for a model that writes a second, different answer afterwards.
    m = ANSWER_RE.search(text)
    return m.group(1).lower() if m else None


def _detail_xml(text: str) -> tuple[str, list[Component]] | None:
    try:
        root = ET.fromstring(f"<root>{text}</root>")
    except (ET.ParseError, ValueError):
        return None
    overview_el = root.find(".//overview")
    overview = "".join(overview_el.itertext()).strip() if overview_el is not None else ""
    comps = []
    for el in root.iter("component"):
        analysis_el = el.find("analysis")
        anomaly_el = el.find("anomaly")
        comps.append(Component(
            name=(el.get("name") or "").strip(),
            analysis="".join(analysis_el.itertext()).strip() if analysis_el is not None else "",
            anomaly="".join(anomaly_el.itertext()).strip().lower() if anomaly_el is not None else "",
        ))
    if overview_el is None and not comps:
        return None
    return overview, comps


def _detail_regex(text: str) -> tuple[str, list[Component]] | None:
    m = _OVERVIEW_RE.search(text)
    overview = m.group(1).strip() if m else ""
    comps = []
    for cm in _COMPONENT_RE.finditer(text):
        body = cm.group(3)
        am = _ANALYSIS_RE.search(body)
        nm = _ANOMALY_RE.search(body)
        comps.append(Component(
            name=(cm.group(1) if cm.group(1) is not None else cm.group(2) or "").strip(),
            analysis=am.group(1).strip() if am else "",
            anomaly=nm.group(1).strip().lower() if nm else "",
        ))
    if m is None and not comps:
        return None
    return overview, comps


def parse_trial(text: object) -> Trial:
    """Read one critic response. Never raises; unreadable parts are left empty and flagged."""
    s = _as_text(text)
    trial = Trial(text=s, answer=parse_answer(s))
    for kind, fn in (("xml", _detail_xml), ("regex", _detail_regex)):
        try:
            got = fn(s)
        except Exception:  # noqa: BLE001 - a parser bug must not lose the trial
            got = None
        if got is not None:
            trial.overview, trial.components = got
            trial.detail = kind
            break
    return trial


def score(trials: Sequence[Trial]) -> float:
    parsed = [t for t in trials if t.parsed]
    if not parsed:
        return 0.0
    return sum(1 for t in parsed if t.answer == "no") / len(parsed)


def score_pct(trials: Sequence[Trial]) -> int:
    # Integer floor instead of int(score*100): float rounding would turn 57/100 into 56.
    parsed = [t for t in trials if t.parsed]
    if not parsed:
        return 0
    return (100 * sum(1 for t in parsed if t.answer == "no")) // len(parsed)


def score_tag(trials: Sequence[Trial]) -> str:
    return f"{score_pct(trials):03d}"


def counts(trials: Sequence[Trial]) -> dict:
    yes = sum(1 for t in trials if t.answer == "yes")
    no = sum(1 for t in trials if t.answer == "no")
    return {"anomaly": yes, "no_anomaly": no, "parsed": yes + no, "trials": len(trials)}


@dataclass
class CriticResult:
    """One scored video; what `write_ranking` ranks and what the pipeline reports."""

    video: str
    score: float
    score_pct: int
    json_path: str
    html_path: str
    answers: list  # per trial: "yes" | "no" | None


def write_report(video_path: str | os.PathLike, trials: Sequence[Trial], out_dir: str | os.PathLike) -> CriticResult:
    """Write `<stem>_score<NNN>.json` and `.html` into out_dir; return where and the score."""
    video_path = Path(video_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = score_tag(trials)
    base = out / f"{video_path.stem}_score{tag}"
    json_path, html_path = base.with_suffix(".json"), base.with_suffix(".html")
    sc = score(trials)
    doc = {
        "video": str(video_path),
        "score": sc,
        "score_pct": tag,
        "counts": counts(trials),
        "trials": [t.to_dict() for t in trials],
    }
    json_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    html_path.write_text(render_html(video_path, trials), encoding="utf-8")
    return CriticResult(
        video=str(video_path), score=sc, score_pct=score_pct(trials),
        json_path=str(json_path), html_path=str(html_path), answers=[t.answer for t in trials],
    )


def rank(results: Iterable[CriticResult]) -> list[CriticResult]:
    # sorted() is stable: equal scores keep generation (seed) order.
    return sorted(results, key=lambda r: r.score, reverse=True)


def write_ranking(results: Iterable[CriticResult], path: str | os.PathLike) -> dict:
    ranked = rank(results)
    doc = {
        "winner": ranked[0].video if ranked else None,
        "ranking": [
            {"rank": i + 1, "video": r.video, "score": r.score, "score_pct": f"{r.score_pct:03d}",
             "json": r.json_path, "html": r.html_path}
            for i, r in enumerate(ranked)
        ],
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return doc


# ---------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }
video { max-width: 600px; width: 100%; display: block; margin: 1em 0; }
.stats { display: flex; gap: 1em; margin: 1em 0; }
.stat { flex: 1; border-radius: 6px; padding: .8em; text-align: center; background: #f3f3f3; }
.stat b { display: block; font-size: 1.8em; }
.bad { background: #fdecea; color: #b71c1c; }
.good { background: #e9f6ea; color: #1b5e20; }
.trial { border: 1px solid #ccc; border-radius: 6px; padding: .8em 1em; margin: 1em 0; }
.component { border-left: 4px solid; padding: .3em .8em; margin: .5em 0; }
.component.bad { border-color: #b71c1c; } .component.good { border-color: #1b5e20; }
.answer { font-weight: bold; padding: .3em .8em; margin-top: .6em; }
pre { white-space: pre-wrap; word-break: break-word; background: #f7f7f7; padding: .6em; }
"""


def _e(s: object) -> str:
    return html.escape(_as_text(s), quote=True)


def _video_tag(video_path: Path) -> str:
    try:
        data = base64.b64encode(video_path.read_bytes()).decode("ascii")
    except OSError:
        return f"<p><em>video file not readable: {_e(video_path)}</em></p>"
    return f'<video controls src="data:video/mp4;base64,{data}"></video>'


def _trial_html(i: int, t: Trial) -> str:
    parts = [f'<div class="trial"><h3>Trial {i}</h3>']
    if t.detail == "failed":
        parts.append("<p><em>failed to parse</em></p>")
        parts.append(f"<pre>{_e(t.text)}</pre>")
    else:
        parts.append(f"<p><b>Overview:</b> {_e(t.overview) or '<em>none</em>'}</p>")
        for c in t.components:
            cls = "bad" if c.is_anomaly else "good"
            parts.append(
                f'<div class="component {cls}"><b>{_e(c.name)} - {_e(c.anomaly or "?")}</b>'
                f"<div>{_e(c.analysis)}</div></div>"
            )
    if t.answer is None:
        parts.append('<div class="answer">Final answer: <em>not found</em></div>')
    else:
        cls = "bad" if t.answer == "yes" else "good"
        parts.append(f'<div class="answer {cls}">Final answer: {_e(t.answer.capitalize())}</div>')
    parts.append("</div>")
    return "\n".join(parts)


def render_html(video_path: str | os.PathLike, trials: Sequence[Trial]) -> str:
    """Self-contained report page. Every piece of model text is escaped."""
    video_path = Path(video_path)
    c = counts(trials)
    name = _e(video_path.name)
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Critic report - {name}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Critic report</h1><p>{name} &mdash; score {score_tag(trials)} "
        f"({c['no_anomaly']} of {c['parsed']} parsed answers say no anomaly)</p>",
        _video_tag(video_path),
        "<h2>Summary</h2>",
        '<div class="stats">'
        f'<div class="stat bad"><b>{c["anomaly"]}</b>anomaly</div>'
        f'<div class="stat good"><b>{c["no_anomaly"]}</b>no anomaly</div>'
        f'<div class="stat"><b>{c["parsed"]} / {c["trials"]}</b>answers parsed</div>'
        "</div>",
        f"<h2>Trials ({len(trials)})</h2>",
    ]
    body += [_trial_html(i + 1, t) for i, t in enumerate(trials)]
    body.append("</body></html>")
    return "\n".join(body)
