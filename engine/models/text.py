"""The T5 text encoder that conditions the DiT (transformers' T5EncoderModel, encoder only).

Prompts become [B, 512, dim] float32: tokens padded/truncated to 512, the encoder's last hidden
state, and every position after the prompt's own tokens (its EOS included, so EOS is kept) set to
zero, as the reference does. dim is 1024 for t5-11b, 32 for the tiny profile.

Embeddings are cached per (model, prompt): best-of-N, long video and batches re-use the same
prompt and negative prompt many times, and T5-11B is not cheap.
"""

from __future__ import annotations

import string
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

NUM_TOKENS = 512
CACHE_SIZE = 16


class TextEncoder:
    """A tokenizer + T5EncoderModel pair with a small LRU cache of prompt embeddings."""

    def __init__(self, model: nn.Module, tokenizer, name: str, max_length: int = NUM_TOKENS,
                 cache_size: int = CACHE_SIZE) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device) -> "TextEncoder":
        """Move the model (offload to "cpu" and back is this one call). Cached embeddings stay valid."""
        self.model.to(device)
        return self

    def clear_cache(self) -> None:
        self._cache.clear()

    @torch.no_grad()
    def encode(self, prompts: list[str], run_on=None) -> torch.Tensor:
        """[B, max_length, dim] float32 on the model's device; positions past each prompt's EOS are 0.

        run_on: a device to run the model on when a prompt is not cached (--offload_text_encoder: T5 lives
        on the CPU). The weights are copied there only on a cache miss and dropped after (the CPU copy is
        never written back), so re-encoding the same prompts (best-of-N, long-video chunks, batches) costs
        no transfer of its weights.
        """
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        todo = [p for p in dict.fromkeys(prompts) if (self.name, p) not in self._cache]
        self.misses += len(todo)
        self.hits += len(prompts) - len(todo)
        if todo:
            from engine import memory

            home = self.device
            if run_on is not None and torch.device(run_on) != home:
                with memory.visiting(self.model, run_on):  # one copy there; the home weights stay put
                    embs = self._run(todo)
            else:
                embs = self._run(todo)
            for prompt, emb in zip(todo, embs):
                self._cache[(self.name, prompt)] = emb.to(home)
        rows = []
        for p in prompts:
            self._cache.move_to_end((self.name, p))
            rows.append(self._cache[(self.name, p)])
        out = torch.stack(rows).to(self.device)  # stack copies: callers may modify the result
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def _run(self, prompts: list[str]) -> list[torch.Tensor]:
        batch = self.tokenizer(
            prompts, max_length=self.max_length, padding="max_length", truncation=True, return_tensors="pt",
        )
        device = self.device
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        lengths = mask.sum(dim=1).tolist()  # real tokens, EOS included
        # clone each row so one cached prompt does not pin the whole batch's storage
        return [hidden[i].clone().index_fill_(0, _tail(n, self.max_length, device), 0.0)
                for i, n in enumerate(lengths)]


def _tail(n: int, length: int, device) -> torch.Tensor:
    return torch.arange(n, length, device=device)


def load_t5(path: str | Path, device, dtype: torch.dtype = torch.float32, cache_size: int = CACHE_SIZE) -> TextEncoder:
    """T5 encoder + tokenizer from a local Hugging Face directory (e.g. checkpoints/google-t5/t5-11b).

    Never downloads. Weights go straight to `device` in `dtype` (float32 unless the caller asks for
    the pipeline precision, which is what --downcast_text_encoder means)."""
    from transformers import T5EncoderModel, T5TokenizerFast

    path = str(path)
    tokenizer = T5TokenizerFast.from_pretrained(path, local_files_only=True)
    kwargs = {}
    if _has_accelerate():
        # straight onto the target device; without accelerate transformers loads on CPU first
        kwargs["device_map"] = {"": torch.device(device)}
    model = T5EncoderModel.from_pretrained(path, dtype=dtype, local_files_only=True, **kwargs)
    model.to(device)
    return TextEncoder(model, tokenizer, name=f"t5:{Path(path).name}:{dtype}", cache_size=cache_size)


def _has_accelerate() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


# -- tiny profile: no files, seeded random weights --------------------------------------------------

TINY_D_MODEL = 32


def tiny_tokenizer():
    """A T5 tokenizer built in code: pad/eos/unk, the word-start marker, printable ASCII characters
    and word-initial lowercase letters. Every ASCII prompt tokenises to distinct ids; no files."""
    from transformers import T5TokenizerFast

    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -4.0) for c in chars]
    vocab += [("\u2581" + c, -3.0) for c in string.ascii_lowercase]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def tiny_text_encoder(seed: int = 0, device="cpu", dtype: torch.dtype = torch.float32,
                      cache_size: int = CACHE_SIZE) -> TextEncoder:
    """A 2-layer T5 encoder (d_model 32) with seeded weights, identical on every machine."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_tokenizer()
    cfg = T5Config(
        vocab_size=len(tokenizer), d_model=TINY_D_MODEL, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    model = T5EncoderModel(cfg)
    _seeded_init_(model, seed)
    model.to(device=device, dtype=dtype)
    return TextEncoder(model, tokenizer, name=f"t5-tiny:seed{seed}:{dtype}", cache_size=cache_size)


@torch.no_grad()
def _seeded_init_(model: nn.Module, seed: int) -> None:
    # our own generator, so the weights do not depend on the global RNG or transformers' init
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if "layer_norm" in name:
            val = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
        elif name.endswith("shared.weight") or "relative_attention_bias" in name:
            val = torch.randn(p.shape, generator=gen)
        else:
            val = torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5
        p.copy_(val)
