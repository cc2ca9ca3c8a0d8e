"""Where every checkpoint lives, how it is read, and how each model component is built.

Layout (the seed's, under one root):
  <root>/nvidia/Cosmos-Predict2-{2B|14B}-Video2World/model-{480|720}p-{10|16}fps[-natten].pt
  <root>/nvidia/Cosmos-Predict2-{2B|14B}-Video2World/tokenizer/tokenizer.pth
  <root>/google-t5/t5-11b
  <root>/nvidia/Cosmos-Reason1-7B
  <root>/nvidia/Cosmos-Guardrail1, <root>/meta-llama/Llama-Guard-3-8B
The root is $COSMOS_TUI_CHECKPOINTS if set, else the configured directory, else "checkpoints".

The `tiny` profile needs no file at all: its DiT, VAE and T5 are built with seeded random weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from engine.spec import GenerationSpec

# torch is imported inside the functions that read or build weights: the daemon checks paths at submit
# with this module (CheckpointPaths.missing) and never imports torch

ENV_VAR = "COSMOS_TUI_CHECKPOINTS"
DEFAULT_ROOT = "checkpoints"
TINY_SEED = 0

_configured_root: str | None = None


def set_configured_root(root: str | os.PathLike | None) -> None:
    """The checkpoints directory from the user's config (used when the env var is not set)."""
    global _configured_root
    _configured_root = str(root) if root else None


def checkpoints_root(configured: str | os.PathLike | None = None) -> Path:
    """$COSMOS_TUI_CHECKPOINTS, else `configured` (or the config value set once at start), else ./checkpoints."""
    return Path(os.environ.get(ENV_VAR) or configured or _configured_root or DEFAULT_ROOT)


class MissingCheckpointError(FileNotFoundError):
    """A checkpoint file or directory is not on disk; the message says which and how to get it."""

    reason = "invalid"  # the user's to fix (engine.server.classify), not a crash

    def __init__(self, what: str, path: Path, fix: str) -> None:
        self.what, self.path, self.fix = what, Path(path), fix
        super().__init__(
            f"The {what} checkpoint {path} is missing; {fix} "
            f"(or run with --model_size tiny, which needs no files)."
        )


@dataclass(frozen=True)
class CheckpointPaths:
    """Every checkpoint path one job may touch. None: the tiny profile builds that part itself."""

    root: Path
    dit: Path | None
    vae: Path | None
    t5: Path | None
    reason1: Path
    guardrail: Path
    llama_guard: Path
    download_command: str
    custom_dit: bool = False

    @classmethod
    def for_spec(cls, spec: GenerationSpec, root: str | os.PathLike | None = None) -> "CheckpointPaths":
        base = checkpoints_root(root)
        reason1 = Path(spec.checkpoint_dir) if spec.checkpoint_dir else base / "nvidia" / "Cosmos-Reason1-7B"
        guard, llama = base / "nvidia" / "Cosmos-Guardrail1", base / "meta-llama" / "Llama-Guard-3-8B"
        custom = Path(spec.dit_path) if spec.dit_path else None
        if spec.model_size == "tiny":
            return cls(base, custom, None, None, reason1, guard, llama, download_command(spec, base), bool(custom))
        repo = base / "nvidia" / f"Cosmos-Predict2-{spec.model_size}-Video2World"
        suffix = "-natten" if spec.natten else ""
        dit = custom or repo / f"model-{spec.resolution}p-{spec.fps}fps{suffix}.pt"
        return cls(base, dit, repo / "tokenizer" / "tokenizer.pth", base / "google-t5" / "t5-11b",
                   reason1, guard, llama, download_command(spec, base), bool(custom))

    def needed(self, spec: GenerationSpec) -> list[tuple[str, Path]]:
        """(what, path) of every checkpoint this job cannot run without, in loading order.

        The guardrail directories are not listed: the guardrail falls back to its word list (with a
        warning) when they are absent. The tiny profile needs nothing but a --dit_path it was given;
        --skip_generation (best-of-N scoring existing videos) loads the critic alone.
        """
        out = [] if spec.skip_generation else [("DiT", self.dit), ("VAE tokenizer", self.vae), ("T5 text encoder", self.t5)]
        if spec.model_size != "tiny" and (not spec.disable_prompt_refiner or spec.mode == "bestofn"):
            out.append(("Cosmos-Reason1-7B", self.reason1))
        return [(what, path) for what, path in out if path is not None]

    def missing(self, spec: GenerationSpec) -> list[MissingCheckpointError]:
        return [self.error(what, path) for what, path in self.needed(spec) if not path.exists()]

    def error(self, what: str, path: Path) -> MissingCheckpointError:
        if what == "DiT" and self.custom_dit:
            return MissingCheckpointError(what, path, "check the --dit_path you gave, or leave it empty to use the released one")
        return MissingCheckpointError(what, path, f"download it with `{self.download_command}`")

    def require(self, what: str, path: Path) -> Path:
        if not path.exists():
            raise self.error(what, path)
        return path


def download_command(spec: GenerationSpec, root: Path | None = None) -> str:
    """The seed's download script invocation that fetches this spec's files (it also fetches T5,
    Reason1 and the guardrail models)."""
    size = spec.model_size if spec.model_size != "tiny" else "2B"
    cmd = (f"python -m scripts.download_checkpoints --model_types video2world --model_sizes {size} "
           f"--resolution {spec.resolution} --fps {spec.fps}")
    if spec.natten:
        cmd += " --natten"
    if root is not None and Path(root) != Path(DEFAULT_ROOT):
        cmd += f" --checkpoint_dir {root}"
    return cmd


def checkpoints_present(spec: GenerationSpec, root: str | os.PathLike | None = None) -> bool:
    """True when every file this job needs is on disk (always for the tiny profile). For the UI."""
    paths = CheckpointPaths.for_spec(spec, root)
    return not paths.missing(spec)


def reason_dir(spec: GenerationSpec) -> Path:
    """Cosmos-Reason1-7B directory (prompt refiner and critic); --checkpoint_dir overrides it."""
    return CheckpointPaths.for_spec(spec).reason1


# -- reading files --------------------------------------------------------------------------------


def load_state_dict_file(path: str | os.PathLike, device="cpu", dtype: torch.dtype | None = None) -> dict:
    """Read a .pt/.pth (torch.load, mmap, weights_only where the file allows) or .safetensors file.

    Tensors are moved to `device` one at a time (floating ones cast to `dtype`), so the CPU never
    holds a second full copy: the source is memory-mapped and each mapped tensor is released as
    soon as its copy exists.
    """
    import torch

    path = Path(path)
    device = torch.device(device)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        out = {}
        # safetensors places tensors on the device itself (cuda: straight from the mapped file)
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for key in f.keys():
                out[key] = _cast(f.get_tensor(key), device, dtype)
        return out
    sd = _torch_load(path)
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(sd).__name__})")
    if "state_dict" in sd and isinstance(sd["state_dict"], dict) and not torch.is_tensor(sd["state_dict"]):
        sd = sd["state_dict"]
    for key in list(sd):
        sd[key] = _cast(sd[key], device, dtype)
    return sd


def _torch_load(path: Path):
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError:
        # Files written with Transformer Engine carry `_extra_state` objects that the safe
        # unpickler refuses; these are the user's own checkpoint files, so fall back, and say so.
        import warnings

        warnings.warn(f"{path}: not loadable with weights_only=True; loading with the full unpickler")
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        # legacy (non-zip) .pt files cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def _cast(v, device: torch.device, dtype: torch.dtype | None):
    import torch

    if not torch.is_tensor(v):
        return v
    if dtype is not None and v.is_floating_point():
        return v.to(device=device, dtype=dtype)
    return v.to(device=device)


def strip_prefix(sd: dict, ema: bool = False) -> dict:
    """Keep the regular (`net.`) or, with ema, the EMA (`net_ema.`) weights, prefix removed; drop the
    other set; keys with neither prefix pass through unchanged."""
    want, other = ("net_ema.", "net.") if ema else ("net.", "net_ema.")
    has_want = any(k.startswith(want) for k in sd)
    has_other = any(k.startswith(other) for k in sd)
    if not has_want and has_other:
        if ema:
            raise ValueError("load_ema: this checkpoint has no net_ema. (EMA) weights; its weights are net. "
                             "(released files already hold the EMA weights under net.), so drop --load_ema")
        raise ValueError("this checkpoint holds only net_ema. (EMA) weights; add --load_ema to load them")
    out = {}
    for k, v in sd.items():
        if k.startswith(want):
            out[k[len(want):]] = v
        elif not k.startswith(other):
            out[k] = v
    return out


# -- building components --------------------------------------------------------------------------


def build_dit(spec: GenerationSpec, device, dtype: torch.dtype):
    """The DiT for this spec: the checkpoint's weights (or --dit_path), or seeded random for tiny."""
    import torch

    from engine.models.dit import MiniTrainDIT, dit_config, load_dit_weights

    cfg = replace(dit_config(spec.model_size, spec.natten), attention_backend=spec.attention_backend)
    if spec.model_size == "tiny" and not spec.dit_path:
        return MiniTrainDIT(cfg).random_init_(TINY_SEED).to(device=device, dtype=dtype)
    paths = CheckpointPaths.for_spec(spec)
    path = paths.require("DiT", paths.dit)
    sd = strip_prefix(load_state_dict_file(path, device, dtype), ema=spec.load_ema)
    with torch.device("meta"):
        model = MiniTrainDIT(cfg)
    model = load_dit_weights(model, sd)
    # built on meta so the file's tensors are used in place; a buffer the file cannot fill would stay meta
    assert not any(b.is_meta for b in model.buffers()), "MiniTrainDIT grew a buffer: build it before loading"
    return model.to(device=device, dtype=dtype)


def build_vae(spec: GenerationSpec, device, dtype: torch.dtype):
    """The Wan2.1 VAE (tokenizer.pth, strict) or, for tiny, the tiny VAE with seeded random weights."""
    from engine.models.vae import WanVAE, vae_config

    if spec.model_size == "tiny":
        return WanVAE(vae_config("tiny")).random_init_(TINY_SEED).to(device=device, dtype=dtype)
    paths = CheckpointPaths.for_spec(spec)
    path = paths.require("VAE tokenizer", paths.vae)
    return load_vae_weights_file(path, device, dtype)


def load_vae_weights_file(path: str | os.PathLike, device, dtype: torch.dtype, profile: str = "wan2.1"):
    import torch

    from engine.models.vae import WanVAE, vae_config

    sd = load_state_dict_file(path, device, dtype)
    with torch.device("meta"):
        model = WanVAE(vae_config(profile))
    own = model.state_dict()
    missing, unexpected = own.keys() - sd.keys(), sd.keys() - own.keys()
    if missing or unexpected:
        raise ValueError(
            f"VAE checkpoint {path} does not match the Wan2.1 VAE: "
            f"missing keys: {_few(missing)}; unexpected keys: {_few(unexpected)}"
        )
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device=device, dtype=dtype)


def _few(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def build_text_encoder(spec: GenerationSpec, device, dtype: torch.dtype):
    """T5 for this spec. `dtype` is the pipeline precision: T5 uses it only with
    --downcast_text_encoder and otherwise runs in float32, as the reference does."""
    from engine.models import text

    import torch

    t5_dtype = dtype if spec.downcast_text_encoder else torch.float32
    if spec.model_size == "tiny":
        return text.tiny_text_encoder(TINY_SEED, device=device, dtype=t5_dtype)
    paths = CheckpointPaths.for_spec(spec)
    path = paths.require("T5 text encoder", paths.t5)
    return text.load_t5(path, device, t5_dtype)
