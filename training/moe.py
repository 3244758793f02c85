"""Sparse upcycling of a LLaVA's LLaMA text model into a Mixtral-style mixture of experts, and its export.

Upcycling (Komatsuzaki et al., "Sparse Upcycling", ICLR 2023): every MLP of the dense model becomes E experts that
all start as copies of it, next to a new router. The router is Mixtral's: a linear map to E logits, the top k of
them kept, their softmax the expert weights (transformers computes softmax over all E, keeps the top k and
renormalises, which is the same). Because each token's weights sum to 1 and every expert is the same MLP, the
upcycled model computes what the dense one did, whatever the router says; image and text tokens both route.

The model is built as transformers' `LlavaForConditionalGeneration` with a `MixtralConfig` text model, so the export
is an architecture vLLM serves natively (its LLaVA builds the text model from `text_config.model_type`). Llama
and Mixtral share attention (no biases), RMSNorm, rotary embeddings and the SiLU-gated MLP
(w2(silu(w1 x) * w3 x) = down(silu(gate x) * up x)); only what Mixtral lacks (attention or MLP biases, tensor-
parallel pretraining slices) cannot be mapped, and is refused. The rope settings are copied as they are: Mixtral's
default theta (1e6) differs from Llama's (1e4).

Training keeps each expert's weights as separate parameters (`SplitExperts`), so that experts left out of a task
have no gradients or optimizer state at all; `save_moe_llava` writes Mixtral's checkpoint layout
(`block_sparse_moe.gate`, `block_sparse_moe.experts.<e>.w1/w2/w3`), which vLLM's Mixtral loads and transformers
converts into its fused expert tensors on load.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlavaConfig, LlavaForConditionalGeneration, MixtralConfig

from tokencomp.training.llava_hf import llava_hf_key, save_llava_hf

_SHARED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
                  "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings",
                  "attention_dropout", "rope_parameters")


def mixtral_text_config(llama, num_experts: int, top_k: int) -> MixtralConfig:
    """The Mixtral text config that computes what `llama` (a LlamaConfig) does, with `num_experts` experts per
    layer of which each token uses `top_k`."""
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
    for name, expected in (("attention_bias", False), ("mlp_bias", False), ("pretraining_tp", 1)):
        if getattr(llama, name, expected) != expected:
            raise ValueError(f"Mixtral has no counterpart for {name}={getattr(llama, name)!r}; expected {expected!r}")
    fields = {name: getattr(llama, name) for name in _SHARED_FIELDS}
    return MixtralConfig(**fields, sliding_window=None, num_local_experts=num_experts, num_experts_per_tok=top_k,
                         router_jitter_noise=0.0)


@torch.no_grad()
def upcycle(dense: LlavaForConditionalGeneration, num_experts: int, top_k: int, router_std: float = 0.02,
            seed: int = 0) -> LlavaForConditionalGeneration:
    """A LLaVA with a Mixtral text model whose every expert is a copy of `dense`'s MLP of that layer; routers
    [E, D] drawn from N(0, router_std²) with `seed` (0 makes them all tie: the first k experts then take
    every token). Tower, projector, embeddings, attention, norms and LM head are copied unchanged."""
    config = LlavaConfig(**{k: v for k, v in dense.config.to_dict().items() if k != "text_config"},
                         text_config=mixtral_text_config(dense.config.text_config, num_experts, top_k))
    moe = LlavaForConditionalGeneration(config).to(dense.dtype).eval()
    state = dense.state_dict()
    mlp = {k: v for k, v in state.items() if k.startswith("model.language_model.") and ".mlp." in k}
    missing, unexpected = moe.load_state_dict({k: v for k, v in state.items() if k not in mlp}, strict=False)
    if unexpected or any(not k.startswith("model.language_model.") or ".mlp." not in k for k in missing):
        raise ValueError(f"dense and upcycled models differ outside the MLPs: missing {missing}, unexpected "
                         f"{unexpected}")
    generator = torch.Generator().manual_seed(seed)
    for i, layer in enumerate(moe.model.language_model.layers):
        prefix = f"model.language_model.layers.{i}.mlp."
        gate, up, down = (mlp[prefix + f"{p}_proj.weight"] for p in ("gate", "up", "down"))
        layer.mlp.experts.gate_up_proj.copy_(torch.cat([gate, up])[None].expand(num_experts, -1, -1))
        layer.mlp.experts.down_proj.copy_(down[None].expand(num_experts, -1, -1))
        layer.mlp.gate.weight.copy_(torch.randn(layer.mlp.gate.weight.shape, generator=generator) * router_std)
    moe.generation_config = dense.generation_config
    return moe


class SplitExperts(torch.nn.Module):
    """transformers' `MixtralExperts` with one (w1, w3, w2) set of parameters per expert, named as in Mixtral's
    checkpoints (`<e>.w1.weight` [I, D] gate, `w3` [I, D] up, `w2` [D, I] down), so that freezing an expert is
    `requires_grad_(False)` on its own tensors."""

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, act) -> None:
        """gate_up [E, 2I, D] and down [E, D, I]: a `MixtralExperts`' fused tensors (copied)."""
        super().__init__()
        inner = down.shape[-1]
        self.act_fn = act
        self.experts = torch.nn.ModuleList()
        for e in range(len(down)):
            expert = torch.nn.Module()
            for name, weight in (("w1", gate_up[e, :inner]), ("w3", gate_up[e, inner:]), ("w2", down[e])):
                expert.register_module(name, torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False))
                getattr(expert, name).weight.data.copy_(weight)
            self.experts.append(expert)

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        """hidden [T, D], top_k_index / top_k_weights [T, k] -> [T, D]: each token's weighted sum of its experts."""
        out = torch.zeros_like(hidden)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(top_k_index == e)
            if len(token):
                x = hidden[token]
                y = expert.w2(self.act_fn(expert.w1(x)) * expert.w3(x)) * top_k_weights[token, slot, None]
                out.index_add_(0, token, y.to(out.dtype))
        return out

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate_up [E, 2I, D], down [E, D, I]) in `MixtralExperts`' layout."""
        gate_up = torch.stack([torch.cat([x.w1.weight, x.w3.weight]) for x in self.experts])
        return gate_up, torch.stack([x.w2.weight for x in self.experts])


def split_experts(model: LlavaForConditionalGeneration) -> None:
    """Replace every layer's fused experts by `SplitExperts` holding the same numbers (in place)."""
    for layer in model.model.language_model.layers:
        fused = layer.mlp.experts
        if not isinstance(fused, SplitExperts):
            layer.mlp.experts = SplitExperts(fused.gate_up_proj.data, fused.down_proj.data, fused.act_fn)


def experts_of(model: LlavaForConditionalGeneration) -> list[SplitExperts]:
    """Each layer's `SplitExperts` (call `split_experts` first)."""
    out = [layer.mlp.experts for layer in model.model.language_model.layers]
    if not all(isinstance(x, SplitExperts) for x in out):
        raise ValueError("the model's experts are fused; call split_experts(model) first")
    return out


def router_load_loss(router_logits: list[torch.Tensor], top_k: int, valid: torch.Tensor) -> torch.Tensor:
    """Switch/Mixtral load-balancing loss, averaged over layers: E · Σ_e f_e · P_e, where f_e is the share of
    (token, slot) picks that go to expert e and P_e its mean router probability, over the `valid` tokens.
    router_logits: per layer [T, E]; valid [T] bool. It is 1 when picks and probabilities are spread evenly and
    grows as both concentrate on the same experts."""
    total = router_logits[0].new_zeros(())
    for logits in router_logits:
        logits = logits[valid]
        probs = F.softmax(logits.float(), dim=-1)
        picks = F.one_hot(probs.topk(top_k, dim=-1).indices, logits.shape[-1]).float().sum(1)
        total = total + logits.shape[-1] * (picks.mean(0) / top_k * probs.mean(0)).sum()
    return total / len(router_logits)


def mixtral_checkpoint_state(model: LlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The model's tensors under llava-hf names, the text model's MoE in Mixtral's checkpoint layout."""
    state = {}
    for name, value in model.state_dict().items():
        key = llava_hf_key(name)
        if ".mlp.gate." in key:
            key = key.replace(".mlp.gate.", ".block_sparse_moe.gate.")
        elif ".mlp.experts." in key:
            continue
        state[key] = value.detach().contiguous()
    for i, layer in enumerate(model.model.language_model.layers):
        experts = layer.mlp.experts
        gate_up, down = experts.fused() if isinstance(experts, SplitExperts) else \
            (experts.gate_up_proj.data, experts.down_proj.data)
        inner = down.shape[-1]
        for e in range(len(down)):
            prefix = f"language_model.model.layers.{i}.block_sparse_moe.experts.{e}."
            state[prefix + "w1.weight"] = gate_up[e, :inner].contiguous()
            state[prefix + "w3.weight"] = gate_up[e, inner:].contiguous()
            state[prefix + "w2.weight"] = down[e].contiguous()
    return state


def save_moe_llava(model: LlavaForConditionalGeneration, path: str | Path, processor=None) -> Path:
    """Write config, weights (llava-hf names, Mixtral's expert layout, one safetensors file) and, if given, the
    processor to `path`: the hub layout that `tokencomp serve`, vLLM and transformers load."""
    return save_llava_hf(model, path, processor, state=mixtral_checkpoint_state(model))
