"""Context parallelism (CP) across GPUs under torchrun: the latent is split along time across ranks.

Launch: `torchrun --nproc_per_node=N -m engine.video2world ... --num_gpus N`. torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `maybe_init_from_env(num_gpus)` reads them.

How the DiT runs under CP (see `ContextParallel`):
- Every rank holds the FULL sampler state (noise is seeded, the conditioning latent and text embeddings
  are broadcast from rank 0), so engine/sampling.py runs unchanged on every rank.
- Each network call takes this rank's contiguous block of latent frames (rank r owns frames
  [r*T/cp, (r+1)*T/cp)), the per-frame timesteps and condition mask split the same way; text embedding,
  fps and padding mask are passed whole. Patch embed, AdaLN, cross-attention, MLP and the final layer
  are per token or per frame, so they run locally; RoPE gets the global frame offset (t_offset).
- Self-attention is the only place tokens meet: an all-to-all turns q/k/v [B, L/cp, N, D] into
  [B, L, N/cp, D] (all tokens, a group of heads), the original op (dense SDPA, or NATTEN with the GLOBAL
  grid) runs on the whole sequence, and the inverse all-to-all brings [B, L/cp, N, D] back (Ulysses).
- The output is all-gathered along T on every rank (each rank's sampler needs the full x0 for its next
  step); at the end every rank holds the same x0 and rank 0 alone decodes it with the VAE.

Padding. When T does not divide by the rank count, T is padded at the END up to a multiple (the pad
frames are zeros with timestep 0 and land on the last ranks). Plain padding is NOT exact: dense
attention would let real queries attend to pad keys, and NATTEN's temporal window (the whole clip)
would grow to the padded length. So after the sequence all-to-all, when every rank holds the whole
padded sequence in (t h w) order, the wrapper cuts the pad tokens off (they are the last
(Tpad - T)*H*W tokens), runs the inner op on exactly the real tokens with the real grid, and fills zeros
back in for the pad positions. Every other sub-layer works per token or per frame, so pad frames never
touch real ones, and the output is exact. Pad frames are dropped after the gather.

Heads that do not divide by the rank count are padded with zero heads (each head attends alone, so
zero heads change nothing) and dropped after the inverse all-to-all; exact, at the cost of idle head
slots (e.g. 2 heads on 4 ranks: two ranks attend only zeros).

Failures. The compute group has a finite timeout (COSMOS_CP_TIMEOUT_S, default 300 s): on gloo a
collective that waits longer, or whose peer died, raises `ParallelError` naming this rank; on NCCL
the watchdog aborts the process after the timeout, and torchrun then stops the other ranks. A second,
CPU (gloo) "control" group with a long timeout carries requests and small objects between jobs, when
ranks legitimately wait for a long time (rank 0 decoding, writing, running the critic, or idle).

This is inference only: the collectives here have no autograd support.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from engine.spec import InputError

DEFAULT_TIMEOUT_S = 300.0
CONTROL_TIMEOUT = datetime.timedelta(days=7)


class ParallelError(RuntimeError):
    """A collective failed: another rank died, hung past the timeout, or the group is broken."""


class ParallelSetupError(InputError):
    """--num_gpus and the way the process was started disagree: a user mistake (exit 2 / reason
    "invalid" wherever InputError is handled), and the message says the fix."""


class RemoteFailure(RuntimeError):
    """Rank 0 failed a step the other ranks were waiting on; its message is carried over."""


# --------------------------------------------------------------------------------------------------------
# Process group set-up


@dataclass
class CPState:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    timeout_s: float
    group: Any  # the compute group (the default group)
    control: Any  # gloo group with a long timeout, for objects and waits between jobs


_STATE: Optional[CPState] = None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ParallelSetupError(f"environment variable {name}={raw!r} is not an integer") from None


def env_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 when not under torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def timeout_s() -> float:
    raw = os.environ.get("COSMOS_CP_TIMEOUT_S")
    return float(raw) if raw else DEFAULT_TIMEOUT_S


def _pick_device(local_rank: int) -> tuple[torch.device, str]:
    forced = os.environ.get("COSMOS_CP_BACKEND")  # tests and CPU debugging: gloo on a GPU box
    if torch.cuda.is_available() and forced != "gloo":
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise ParallelSetupError(
                f"LOCAL_RANK {local_rank} but only {n} GPU(s) are visible (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); start fewer processes per node"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), "nccl"
    return torch.device("cpu"), "gloo"


def init_from_env() -> Optional[CPState]:
    """Join the process group torchrun describes; None (and nothing done) for a single process.

    Idempotent: a second call returns the state of the first.
    """
    global _STATE
    if _STATE is not None:
        return _STATE
    world = env_world_size()
    if world <= 1:
        return None
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ParallelSetupError(
            f"WORLD_SIZE={world} but {', '.join(missing)} is not set; start the engine with torchrun"
        )
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    device, backend = _pick_device(local_rank)
    secs = timeout_s()
    if backend == "nccl":
        # The watchdog turns a collective stuck past the timeout into a process abort (torchrun then
        # stops the rest) instead of an endless hang. Our default equals torch's; set it explicitly so a
        # user environment that turned it off does not bring the hang back.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=secs))
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    _STATE = CPState(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend,
                     timeout_s=secs, group=dist.group.WORLD, control=control)
    return _STATE


def check_num_gpus(num_gpus: int) -> None:
    """Raise ParallelSetupError when --num_gpus does not match the processes torchrun started."""
    world = env_world_size()
    if num_gpus == world:
        return
    if world == 1:
        raise ParallelSetupError(
            f"--num_gpus {num_gpus} needs one process per GPU: run `torchrun --nproc_per_node={num_gpus} "
            f"-m engine.video2world ... --num_gpus {num_gpus}`"
        )
    raise ParallelSetupError(
        f"--num_gpus {num_gpus} but torchrun started {world} processes; make --nproc_per_node and "
        f"--num_gpus equal"
    )


def maybe_init_from_env(num_gpus: int = 1) -> Optional[CPState]:
    """What a mode calls first: check --num_gpus against torchrun's world and join the group.

    Accepts a GenerationSpec too (reads .num_gpus). None for a plain single-GPU run.
    """
    num_gpus = int(getattr(num_gpus, "num_gpus", num_gpus))
    check_num_gpus(num_gpus)
    return init_from_env()


def state() -> Optional[CPState]:
    return _STATE


def rank() -> int:
    return _STATE.rank if _STATE else 0


def world_size() -> int:
    return _STATE.world_size if _STATE else 1


def is_main() -> bool:
    return rank() == 0


def device(default: Optional[torch.device] = None) -> Optional[torch.device]:
    """This rank's device under CP, else `default`."""
    return _STATE.device if _STATE else default


def shutdown() -> None:
    """Leave the process group (end of a CLI run). Safe to call when never initialised."""
    global _STATE
    if dist.is_initialized():
        dist.destroy_process_group()
    _STATE = None


# --------------------------------------------------------------------------------------------------------
# Collectives with a clear error


def _fail(what: str, exc: BaseException) -> ParallelError:
    st = _STATE
    who = f"rank {st.rank} of {st.world_size}" if st else f"rank {dist.get_rank()} of {dist.get_world_size()}"
    limit = f"{st.timeout_s:.0f}" if st else "?"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return ParallelError(
        f"context parallel: {what} failed on {who}: another rank died or did not answer within the "
        f"{limit}s collective timeout ({type(exc).__name__}: {first})"
    )


def _run(what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ParallelError:
        raise
    except (RuntimeError, dist.DistError) as exc:  # gloo raises RuntimeError / DistBackendError
        raise _fail(what, exc) from exc


def all_to_all(x: torch.Tensor, group=None) -> torch.Tensor:
    """Equal split along dim 0: chunk j goes to rank j; chunk j of the result came from rank j."""
    x = x.contiguous()
    out = torch.empty_like(x)
    _run("all-to-all", lambda: dist.all_to_all_single(out, x, group=group))
    return out


def all_gather_cat(x: torch.Tensor, dim: int, group=None) -> torch.Tensor:
    """Concatenate every rank's `x` along `dim`, in rank order, on every rank."""
    n = dist.get_world_size(group)
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(n)]
    _run("all-gather", lambda: dist.all_gather(parts, x, group=group))
    return torch.cat(parts, dim=dim)


def broadcast_tensor(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank `src`'s tensor on every rank (same shape/dtype/device expected everywhere). No-op alone.

    Use it for what every rank computes but must agree on bit for bit: the conditioning latent, the
    text embeddings. It runs on the compute group, so call it where ranks are in step.
    """
    if _STATE is None:
        return t
    t = t.contiguous()
    _run("broadcast", lambda: dist.broadcast(t, src, group=_STATE.group))
    return t


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """Rank `src`'s picklable object on every rank (others pass anything, e.g. None). CPU tensors only
    inside: a CUDA tensor would be unpickled onto the sender's device index. Uses the control group, so
    the receivers may wait long (e.g. for the next request)."""
    if _STATE is None:
        return obj
    box = [obj if _STATE.rank == src else None]
    _run("object broadcast", lambda: dist.broadcast_object_list(box, src=src, group=_STATE.control))
    return box[0]


def share_from_main(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only and hand its result to every rank.

    If fn raises on rank 0, rank 0 re-raises its own exception and the other ranks raise RemoteFailure
    with its message, so no rank is left waiting on a collective rank 0 will never join.
    """
    if _STATE is None:
        return fn()
    if _STATE.rank == 0:
        try:
            value = fn()
        except BaseException as exc:
            broadcast_object(("error", f"{type(exc).__name__}: {exc}"))
            raise
        broadcast_object(("ok", value))
        return value
    kind, value = broadcast_object(None)
    if kind == "error":
        raise RemoteFailure(f"rank 0 failed: {value}")
    return value


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank (e.g. cancel: only rank 0 sees the request)."""
    if _STATE is None:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    _run("flag all-reduce", lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_STATE.control))
    return bool(t.item())


def barrier() -> None:
    if _STATE is not None:
        _run("barrier", lambda: dist.barrier(group=_STATE.control))


# --------------------------------------------------------------------------------------------------------
# Splitting along time


def padded_length(n: int, world: int, multiple: int = 1) -> int:
    """n rounded up so each of `world` ranks gets the same number of whole `multiple`-frame units."""
    unit = world * multiple
    return -(-n // unit) * unit


def split_frames(x: torch.Tensor, dim: int, rank_: int, world: int, multiple: int = 1) -> torch.Tensor:
    """This rank's contiguous block along `dim`, zero-padding the end up to `padded_length`."""
    n = x.shape[dim]
    total = padded_length(n, world, multiple)
    if total != n:
        pad_shape = list(x.shape)
        pad_shape[dim] = total - n
        x = torch.cat([x, x.new_zeros(pad_shape)], dim=dim)
    local = total // world
    return x.narrow(dim, rank_ * local, local)


# --------------------------------------------------------------------------------------------------------
# Self-attention across ranks (Ulysses all-to-all over heads)


class _Frames:
    """Shared between ContextParallel and its attention wrappers: the real (unpadded) global number of
    token frames of the current call. None outside a ContextParallel call: then nothing is padded."""

    def __init__(self):
        self.real_t: Optional[int] = None


class UlyssesAttentionOp:
    """Replaces a block's `self_attn.attn_op`: (q, k, v [B, L_local, N, D], local grid) -> [B, L_local, N, D].

    Holds the original op (dense or NATTEN) and calls it with the whole sequence and the GLOBAL grid.
    """

    def __init__(self, inner, group, frames: Optional[_Frames] = None):
        self.inner = inner
        self.group = group
        self.frames = frames or _Frames()
        # The pipeline torch.compiles each DiT block on CUDA. Dynamo must not trace the c10d calls and the
        # error wrapping: the graph breaks at this op and the rest of the block compiles as before. Done
        # per instance so importing this module does not import torch._dynamo (over a second).
        self._attend = torch.compiler.disable(self._attend_eager)

    def __call__(self, q, k, v, grid):
        return self._attend(q, k, v, grid)

    def _attend_eager(self, q, k, v, grid):
        world = dist.get_world_size(self.group)
        B, Ll, N, D = q.shape
        t_local, H, W = (int(g) for g in grid)
        assert Ll == t_local * H * W, f"local sequence {Ll} != {t_local}*{H}*{W}"
        t_pad = t_local * world
        t_real = self.frames.real_t or t_pad
        n_pad = -(-N // world) * world
        h = n_pad // world

        qkv = torch.stack([q, k, v])  # one all-to-all for all three
        if n_pad != N:
            qkv = F.pad(qkv, (0, 0, 0, n_pad - N))
        # [3, B, Ll, (world, h), D] -> [world, 3, B, Ll, h, D]: chunk j holds head group j
        send = qkv.view(3, B, Ll, world, h, D).permute(3, 0, 1, 2, 4, 5)
        recv = all_to_all(send, self.group)  # chunk j: rank j's tokens, my head group
        full = recv.permute(1, 2, 0, 3, 4, 5).reshape(3, B, world * Ll, h, D)

        # Pad frames are the tail of the (t h w) sequence: attend over the real tokens only.
        L_real = t_real * H * W
        qf, kf, vf = (t[:, :L_real] for t in full.unbind(0))
        out = self.inner(qf, kf, vf, (t_real, H, W))
        if L_real != world * Ll:
            out = F.pad(out, (0, 0, 0, 0, 0, world * Ll - L_real))

        # [B, (world, Ll), h, D] -> [world, B, Ll, h, D]: chunk j holds rank j's tokens
        send = out.reshape(B, world, Ll, h, D).permute(1, 0, 2, 3, 4)
        recv = all_to_all(send, self.group)  # chunk j: my tokens, head group j
        out = recv.permute(1, 2, 0, 3, 4).reshape(B, Ll, n_pad, D)
        return out[:, :, :N]


# --------------------------------------------------------------------------------------------------------
# The wrapped network


class ContextParallel(nn.Module):
    """A MiniTrainDIT run across the ranks of `group`, with the DiT's own call signature.

    Takes full-size inputs on every rank (identical everywhere), runs this rank's frames, and returns the
    full-size output on every rank. Wrapping replaces each block's self-attention op in place; `unwrap()`
    puts the originals back.
    """

    def __init__(self, dit: nn.Module, group=None):
        super().__init__()
        self.dit = dit
        self.group = group if group is not None else dist.group.WORLD
        self.world = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)
        self._frames = _Frames()
        for block in dit.blocks:
            op = block.self_attn.attn_op
            if isinstance(op, UlyssesAttentionOp):
                raise ValueError("this DiT is already wrapped for context parallelism")
            block.self_attn.attn_op = UlyssesAttentionOp(op, self.group, self._frames)

    @property
    def config(self):
        return self.dit.config

    def unwrap(self) -> nn.Module:
        for block in self.dit.blocks:
            op = block.self_attn.attn_op
            if isinstance(op, UlyssesAttentionOp):
                block.self_attn.attn_op = op.inner
        return self.dit

    def forward(self, x, timesteps, crossattn_emb, condition_mask=None, fps=None, padding_mask=None):
        B, _, T = x.shape[:3]
        pt = self.dit.config.patch_temporal
        assert T % pt == 0, f"{T} latent frames do not divide by the temporal patch {pt}"
        split = lambda t: split_frames(t, 2, self.rank, self.world, pt)  # noqa: E731
        x_local = split(x)
        t_local = x_local.shape[2]
        if condition_mask is not None:
            condition_mask = split(condition_mask.expand(B, 1, *x.shape[2:]))
        if timesteps.ndim == 2 and timesteps.shape[1] == T and T > 1:
            timesteps = split_frames(timesteps, 1, self.rank, self.world, pt)
        self._frames.real_t = T // pt
        try:
            out = self.dit(x_local, timesteps, crossattn_emb, condition_mask, fps=fps,
                           padding_mask=padding_mask, t_offset=self.rank * (t_local // pt))
        finally:
            self._frames.real_t = None
        return all_gather_cat(out, 2, self.group)[:, :, :T]


def wrap_dit(dit: nn.Module, group=None) -> nn.Module:
    """The DiT for this process: wrapped in ContextParallel under torchrun with several ranks, else as is."""
    if group is None and (_STATE is None or _STATE.world_size == 1):
        return dit
    return ContextParallel(dit, group)


# --------------------------------------------------------------------------------------------------------
# The engine server under torchrun: rank 0 reads requests, every rank runs them in step


def send_request(request: Optional[dict]) -> None:
    """Rank 0: hand the next request (None = exit) to the other ranks before running it."""
    if _STATE is not None and _STATE.world_size > 1:
        broadcast_object(request)


def next_request() -> Optional[dict]:
    """Ranks > 0: wait (on the long-timeout control group) for rank 0's next request; None = exit."""
    if _STATE is None:
        raise ParallelSetupError("next_request needs the process group: call init_from_env() first")
    return broadcast_object(None)
