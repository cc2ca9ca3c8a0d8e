"""Context parallelism (engine/parallel.py) on CPU with gloo: 2 ranks under torchrun and 4 ranks started
with torchrun's environment by hand must give the single-process DiT output and sampled latent, for dense
and NATTEN self-attention, with T and heads that do not divide by the rank count; a rank that dies or
hangs makes the others fail with a clear error instead of waiting forever.

Every worker process is bounded by a subprocess timeout; a worker still running then is killed (by its
own pid) and the test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "parallel_worker.py"
sys.path.insert(0, str(WORKER.parent))

import parallel_worker as pw  # noqa: E402

from engine import parallel  # noqa: E402

RUN_LIMIT_S = 150  # generous: two shared CPU cores; a healthy run takes a few seconds
REL_TOL = 1e-5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["COSMOS_CP_BACKEND"] = "gloo"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def _finish(procs: list[subprocess.Popen], limit: float) -> list[tuple[int, str]]:
    """(returncode, stderr) per process; kills the ones still running after `limit` seconds."""
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    os.kill(q.pid, signal.SIGKILL)
            _, err = p.communicate()
            pytest.fail(f"worker pid {p.pid} still running after {limit}s (hang); stderr:\n{err[-2000:]}")
        out.append((p.returncode, err))
    return out


def launch_ranks(world: int, args: list[str], extra_env: dict | None = None) -> list[subprocess.Popen]:
    """One process per rank with the environment torchrun would give it."""
    port = free_port()
    procs = []
    for r in range(world):
        env = _env({"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **(extra_env or {})})
        procs.append(subprocess.Popen([sys.executable, str(WORKER), *args], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return procs


def launch_torchrun(world: int, args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(WORKER), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference():
    """Single-process DiT output and sampled latent for every case."""
    torch.set_num_threads(1)
    ref = {}
    for name, (kind, T) in pw.CASES.items():
        net, inp = pw.build(kind), pw.inputs(T)
        ref[name] = {"forward": pw.forward(net, inp), "sample": pw.sample(net, inp, T)}
    return ref


@pytest.fixture(scope="module", params=[2, 4], ids=["2ranks_torchrun", "4ranks"])
def cp_results(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"cp{world}")
    if world == 2:
        procs = [launch_torchrun(world, ["run", str(out)])]
    else:
        procs = launch_ranks(world, ["run", str(out)])
    for rc, err in _finish(procs, RUN_LIMIT_S):
        assert rc == 0, f"worker failed (rc {rc}):\n{err[-3000:]}"
    return world, [torch.load(out / f"rank{r}.pt") for r in range(world)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("case", list(pw.CASES))
def test_cp_matches_single_process(cp_results, reference, case):
    world, results = cp_results
    kind, T = pw.CASES[case]
    for key in ("forward", "sample"):
        ref = reference[case][key]
        assert torch.isfinite(ref).all() and ref.abs().max() > 0.1  # a meaningful reference
        for r, res in enumerate(results):
            got = res[case][key]
            assert got.shape == ref.shape, f"{case} {key} rank {r}: shape {tuple(got.shape)} vs {tuple(ref.shape)}"
            err = _rel(got, ref)
            assert err < REL_TOL, f"{case} ({kind}, T={T}) {key} on rank {r} of {world}: rel. error {err:.2e}"


def test_cases_cover_padding_and_head_remainders(cp_results):
    # the cases above must actually exercise the awkward shapes for this rank count
    world, _ = cp_results
    Ts = {T for _, T in pw.CASES.values()}
    heads = {pw.build(kind).config.num_heads for kind, _ in pw.CASES.values()}
    assert any(T % world for T in Ts), "no case pads T"
    assert any(n % world for n in heads), "no case pads heads"
    assert any(T % world == 0 for T in Ts) and any(kind == "natten" for kind, _ in pw.CASES.values())


def test_helpers_share_rank0_values(cp_results):
    world, results = cp_results
    for r, res in enumerate(results):
        assert res["rank"] == r and res["world"] == world
        assert res["is_main"] == (r == 0)
        assert res["shared"] == {"text": "refined", "rank": 0}
        # rank 0 re-raises its own error; the others get RemoteFailure with rank 0's message
        if r == 0:
            assert res["share_error"] == "ZeroDivisionError: division by zero"
        else:
            assert res["share_error"] == "RemoteFailure: rank 0 failed: ZeroDivisionError: division by zero"
        assert res["any_rank"] is True  # only the last rank raised the flag
        assert res["none_flag"] is False
        assert torch.equal(res["broadcast"], torch.zeros(3))
        assert res["requests"] == [{"op": "run", "job": 7, "spec": {"num_gpus": world}}, None]


@pytest.mark.parametrize("how", ["die", "hang"])
def test_lost_rank_fails_the_others(how):
    # hang: rank 1 stops answering; the 3 s collective timeout must end rank 0's wait
    procs = launch_ranks(2, [how], {"COSMOS_CP_TIMEOUT_S": "3"})
    try:
        rc0, err0 = _finish(procs[:1], 90)[0]
    finally:
        if procs[1].poll() is None:  # the hanging rank: ours to stop
            os.kill(procs[1].pid, signal.SIGKILL)
        _, err1 = procs[1].communicate()
    assert f"rank 1 going away ({how})" in err1, err1[-2000:]
    if how == "die":
        assert procs[1].returncode == 3
    assert rc0 != 0, f"rank 0 exited 0 after losing rank 1:\n{err0[-2000:]}"
    assert "rank finished sampling" not in err0
    assert "ParallelError: context parallel:" in err0 and "failed on rank 0 of 2" in err0, err0[-2000:]


# ---- in-process pieces ---------------------------------------------------------------------------


def test_padded_length():
    assert parallel.padded_length(24, 4) == 24
    assert parallel.padded_length(5, 4) == 8
    assert parallel.padded_length(1, 3) == 3
    assert parallel.padded_length(6, 2, multiple=2) == 8


def test_split_frames_contiguous_blocks_with_zero_tail():
    x = torch.arange(1, 6, dtype=torch.float32).view(1, 1, 5, 1, 1)  # frames 1..5
    blocks = [parallel.split_frames(x, 2, r, 4).flatten().tolist() for r in range(4)]
    assert blocks == [[1, 2], [3, 4], [5, 0], [0, 0]]
    t = torch.tensor([[0.1, 0.2, 0.3]])
    assert parallel.split_frames(t, 1, 1, 2).tolist() == [[pytest.approx(0.3), 0.0]]


def test_single_process_needs_no_group(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert parallel.maybe_init_from_env(1) is None
    assert parallel.is_main() and parallel.world_size() == 1 and parallel.rank() == 0
    net = pw.build("dense")
    assert parallel.wrap_dit(net) is net
    assert parallel.share_from_main(lambda: 42) == 42
    assert parallel.any_rank(True) is True and parallel.any_rank(False) is False
    assert parallel.broadcast_object("x") == "x"


def test_num_gpus_without_torchrun_says_how(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(parallel.ParallelSetupError, match=r"torchrun --nproc_per_node=4 .*--num_gpus 4"):
        parallel.maybe_init_from_env(4)


def test_setup_errors_are_input_errors():
    from engine.spec import InputError

    assert issubclass(parallel.ParallelSetupError, InputError)


def test_num_gpus_must_match_world(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(parallel.ParallelSetupError, match=r"--num_gpus 4 but torchrun started 2 processes"):
        parallel.check_num_gpus(4)

    class Spec:
        num_gpus = 1

    with pytest.raises(parallel.ParallelSetupError, match=r"--num_gpus 1 but torchrun started 2"):
        parallel.maybe_init_from_env(Spec())


def test_world_without_rendezvous_address(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(parallel.ParallelSetupError, match="MASTER_ADDR"):
        parallel.init_from_env()
