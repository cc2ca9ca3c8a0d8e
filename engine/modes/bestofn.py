"""Best-of-N: N generations with seeds seed+g, each scored by the critic, then a ranking.

`save_path` is a directory. Per candidate: `<input stem>_seed<seed>.mp4` (+ .txt/.json), and from the
critic `<video stem>_score<NNN>.json` / `.html`; finally `ranking.json` naming the winner.
`--skip_generation` scores the mp4s already in the directory (the reference crashes on that path).
"""

from __future__ import annotations

from pathlib import Path

from engine import events
from engine.spec import GenerationSpec


def candidate_path(spec: GenerationSpec, seed: int) -> Path:
    return Path(spec.save_path) / f"{Path(spec.input_path).stem}_seed{seed}.mp4"


def run(spec: GenerationSpec, ev: events.Emitter, pipeline=None, cancel=None) -> list[str]:
    from engine import critic, parallel
    from engine.modes import pipeline_for
    from engine.modes.video2world import generate_into, write_result

    if spec.skip_generation and not parallel.is_main():
        return []  # scoring needs no DiT: rank 0 does it alone
    out_dir = Path(spec.save_path)
    if out_dir.suffix == ".mp4":
        from engine.spec import InputError

        raise InputError(f"save_path: best-of-N writes several files, so save_path must be a directory, "
                         f"not {spec.save_path!r}; e.g. --save_path output/best-of-n")
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs: list[str] = []
    pipe = None
    if spec.skip_generation:
        videos = sorted(p for p in out_dir.glob("*.mp4"))
        if not videos:
            from engine.spec import InputError

            raise InputError(f"skip_generation: there are no .mp4 files in {out_dir} to score; "
                             f"generate first or point --save_path at a folder of videos")
        ev.log(f"scoring {len(videos)} existing videos in {out_dir}")
    else:
        spec.check_input()
        pipe = pipeline_for(spec, ev, pipeline)
        videos = []
        for g in range(spec.num_generations):
            seed = spec.seed + g
            path = candidate_path(spec, seed)
            result, stream = generate_into(
                pipe, spec, path, input_path=spec.input_path, seed=seed, cancel=cancel,
                step_fields={"generation": g + 1, "num_generations": spec.num_generations})
            if not parallel.is_main():
                continue  # rank 0 writes and scores
            outputs += write_result(spec, result, path, ev, stream=stream,
                                    phase_fields={"generation": g + 1, "num_generations": spec.num_generations})
            videos.append(path)
            ev("generation", generation=g + 1, total=spec.num_generations, seed=seed, path=str(path))
        if not parallel.is_main():
            return []
        # the critic needs the GPU the generator holds (14B best-of-N on an 80 GB card)
        pipe.offload_generator()

    from engine.phases import key_fields, phase

    key = key_fields(spec)
    with phase(ev, "loading", key, component="critic"):
        judge = _critic(spec, pipe, ev)
    results = []
    for i, video in enumerate(videos):
        if cancel is not None and cancel.is_set():
            from engine.pipeline import Cancelled

            raise Cancelled("cancelled by the user")
        # the critic samples a video's trials in one batch (num_return_sequences), so one phase covers
        # trials 1..T of video i; `units` = T lets the ETA charge per trial
        with phase(ev, "critic", key, video=i + 1, videos=len(videos), trials=spec.num_critic_trials,
                   units=spec.num_critic_trials):
            texts = judge.critique_video(str(video), trials=spec.num_critic_trials, seed=spec.seed)
            trials = [critic.parse_trial(t) for t in texts]
            result = critic.write_report(video, trials, out_dir)
        for p in (result.json_path, result.html_path):
            outputs.append(p)
            ev("output", path=p, kind="report")
        ev("critic", video=result.video, trial=None, total=len(trials), score=result.score,
           score_pct=result.score_pct, answers=result.answers, index=i + 1, videos=len(videos),
           report=result.html_path)
        results.append(result)
    del judge  # the critic is built per job: give its GPU memory back before the next job's generator returns
    _report_memory(ev, "critic")
    ranking_path = out_dir / "ranking.json"
    doc = critic.write_ranking(results, ranking_path)
    outputs.append(str(ranking_path))
    ev("output", path=str(ranking_path), kind="ranking")
    if doc["winner"]:
        ev.log(f"best video: {doc['winner']} (score {doc['ranking'][0]['score']:.2f})")
    return outputs


def _report_memory(ev: events.Emitter, phase: str) -> None:
    from engine import memory

    memory.release_cached()
    fields = memory.cuda_memory()
    if fields:
        ev("memory", phase=phase, **fields)


def _critic(spec: GenerationSpec, pipe, ev: events.Emitter):
    import torch

    from engine import checkpoints
    from engine.models import reason

    device = pipe.device if pipe is not None else (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    path = spec.checkpoint_dir or checkpoints.reason_dir(spec)
    return reason.build_reason(spec, path, device, offload=False, emit=ev._emit)
