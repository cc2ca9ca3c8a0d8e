"""Parameter-name mapping between NVIDIA's Cosmos-Predict2 checkpoints and diffusers' port.

Our modules use NVIDIA's names (so released `.pt` files load without renaming). diffusers renames
every module but reshapes nothing, so a plain substring table maps one onto the other. Used to load
diffusers-format weights, and by the parity tests and the benchmark to give both implementations
the same weights.
"""

from __future__ import annotations

# Order matters: substring replacements are applied in this order (e.g. `blocks` before the
# per-block names, `adaln_modulation_*` before `self_attn`/`cross_attn`).
DIT_TO_DIFFUSERS: tuple[tuple[str, str], ...] = (
    ("t_embedder.1", "time_embed.t_embedder"),
    ("t_embedding_norm", "time_embed.norm"),
    ("blocks", "transformer_blocks"),
    ("adaln_modulation_self_attn.1", "norm1.linear_1"),
    ("adaln_modulation_self_attn.2", "norm1.linear_2"),
    ("adaln_modulation_cross_attn.1", "norm2.linear_1"),
    ("adaln_modulation_cross_attn.2", "norm2.linear_2"),
    ("adaln_modulation_mlp.1", "norm3.linear_1"),
    ("adaln_modulation_mlp.2", "norm3.linear_2"),
    ("self_attn", "attn1"),
    ("cross_attn", "attn2"),
    ("q_proj", "to_q"),
    ("k_proj", "to_k"),
    ("v_proj", "to_v"),
    ("output_proj", "to_out.0"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
    ("mlp.layer1", "ff.net.0.proj"),
    ("mlp.layer2", "ff.net.2"),
    ("x_embedder.proj.1", "patch_embed.proj"),
    ("final_layer.adaln_modulation.1", "norm_out.linear_1"),
    ("final_layer.adaln_modulation.2", "norm_out.linear_2"),
    ("final_layer.linear", "proj_out"),
)


def dit_key_to_diffusers(key: str) -> str:
    for ours, theirs in DIT_TO_DIFFUSERS:
        key = key.replace(ours, theirs)
    return key


def dit_key_from_diffusers(key: str) -> str:
    for ours, theirs in reversed(DIT_TO_DIFFUSERS):
        key = key.replace(theirs, ours)
    return key


def dit_state_dict_to_diffusers(sd: dict) -> dict:
    return {dit_key_to_diffusers(k): v for k, v in sd.items()}


def dit_state_dict_from_diffusers(sd: dict) -> dict:
    return {dit_key_from_diffusers(k): v for k, v in sd.items()}
