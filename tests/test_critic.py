import json
import random

import pytest

from engine import critic


def answer(word: str, extra: str = "") -> str:
    return (
        "<think><overview>A cat walks.</overview>"
        '<component name="cat"><analysis>moves fine</analysis><anomaly>No</anomaly></component>'
        f"{extra}</think><answer>{word}</answer>"
    )


@pytest.mark.parametrize("nos", range(6))
def test_five_parsable_trials_score_in_steps_of_twenty(nos):
    trials = [critic.parse_trial(answer("No")) for _ in range(nos)]
    trials += [critic.parse_trial(answer("Yes")) for _ in range(5 - nos)]
    assert critic.score(trials) == pytest.approx(nos / 5)
    assert critic.score_tag(trials) == f"{nos * 20:03d}"


def test_unparsable_trials_shrink_the_denominator():
    trials = [critic.parse_trial(t) for t in (answer("no"), answer(" NO "), "no answer here", answer("yes"))]
    assert [t.parsed for t in trials] == [True, True, False, True]
    assert critic.score_tag(trials) == "066"
    assert critic.score_tag(trials[:3]) == "100"
    three_of_four = [critic.parse_trial(answer(w)) for w in ("no", "no", "no", "yes")]
    assert critic.score_tag(three_of_four) == "075"


def test_none_parsed_scores_zero():
    trials = [critic.parse_trial(t) for t in ("", "<answer>maybe</answer>", "<answer>no")]
    assert not any(t.parsed for t in trials)
    assert critic.score(trials) == 0.0
    assert critic.score_tag(trials) == "000"
    assert critic.score([]) == 0.0


def test_detail_parse_xml_then_regex_then_failed():
    good = critic.parse_trial(answer("No"))
    assert good.detail == "xml"
    assert good.overview == "A cat walks."
    assert [(c.name, c.anomaly) for c in good.components] == [("cat", "no")]
    # A bare '&' breaks strict XML; the regex fallback still reads the components.
    broken = critic.parse_trial(answer(
        "Yes", '<component name="sky & sea"><analysis>warps < 1s</analysis><anomaly>Yes</anomaly></component>'
    ))
    assert broken.detail == "regex"
    assert [(c.name, c.anomaly) for c in broken.components] == [("cat", "no"), ("sky & sea", "yes")]
    assert broken.answer == "yes"
    assert critic.parse_trial("tok tok <answer>no</answer>").detail == "failed"


def test_parser_survives_random_text_and_bytes():
    rng = random.Random(1234)
    alphabet = "<>/=\"' answerYESnothinkoverviewcomponent&;\x00\n\t\u00e9\u4e2d"
    for _ in range(300):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        t = critic.parse_trial(s)
        assert t.answer in (None, "yes", "no")
        critic.render_html("x.mp4", [t])
    for _ in range(50):
        b = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        assert critic.parse_trial(b).text is not None
    assert critic.parse_trial(None).answer is None


def test_html_escapes_model_text(tmp_path):
    evil = "<script>alert(1)</script>"
    trials = [
        critic.parse_trial(answer("No", f'<component name="{evil}"><analysis>x</analysis><anomaly>Yes</anomaly></component>')),
        critic.parse_trial(f"garbage {evil} <answer>yes</answer>"),
    ]
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x01fake-mp4")
    res = critic.write_report(video, trials, tmp_path / "out")
    page = open(res.html_path, encoding="utf-8").read()
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "failed to parse" in page
    assert "data:video/mp4;base64," in page


def test_report_files_named_with_zero_padded_score(tmp_path):
    video = tmp_path / "input0_seed3.mp4"
    video.write_bytes(b"x")
    trials = [critic.parse_trial(answer(w)) for w in ("no", "yes", "yes")] + [critic.parse_trial("??")]
    res = critic.write_report(video, trials, tmp_path)
    assert res.json_path.endswith("input0_seed3_score033.json")
    assert res.html_path.endswith("input0_seed3_score033.html")
    doc = json.loads(open(res.json_path).read())
    assert [t["text"] for t in doc["trials"]] == [t.text for t in trials]
    assert [t["answer"] for t in doc["trials"]] == ["no", "yes", "yes", None]
    assert doc["counts"] == {"anomaly": 2, "no_anomaly": 1, "parsed": 3, "trials": 4}
    assert res.answers == ["no", "yes", "yes", None]


def test_ranking_sorts_by_score_and_ties_keep_order(tmp_path):
    def r(name, s):
        return critic.CriticResult(video=name, score=s, score_pct=int(s * 100), json_path="", html_path="", answers=[])

    results = [r("a", 0.4), r("b", 0.8), r("c", 0.4), r("d", 0.8), r("e", 0.0)]
    doc = critic.write_ranking(results, tmp_path / "ranking.json")
    assert [x["video"] for x in doc["ranking"]] == ["b", "d", "a", "c", "e"]
    assert doc["winner"] == "b"
    assert json.loads((tmp_path / "ranking.json").read_text())["winner"] == "b"
    assert critic.write_ranking([], tmp_path / "empty.json")["winner"] is None


def test_the_first_answer_tag_decides_as_in_the_reference():
    text = "<think>...</think><answer>No</answer> on reflection <answer>yes</answer>"
    assert critic.parse_answer(text) == "no"
    assert critic.parse_trial(text).answer == "no"
    assert critic.parse_answer("<answer> YES </answer><answer>no</answer>") == "yes"
