"""Sparse upcycling into a Mixtral-text LLaVA and partial expert updates (training/moe.py, training/moe_partial.py),
on tiny random models: the upcycled model computes the dense one's logits; split experts, the Mixtral checkpoint
layout and transformers' reload keep every number; routing mass equals a per-token loop; training the top-u
experts leaves every other expert bit-identical."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from tokencomp.training.moe import (
    experts_of,
    mixtral_text_config,
    router_load_loss,
    save_moe_llava,
    split_experts,
    upcycle,
)
from tokencomp.training.moe_partial import (
    RouterRecorder,
    peak_step_bytes,
    random_experts,
    routing_mass,
    top_experts,
    train_only_experts,
)


def _dense(seed: int = 0, **text) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=56, patch_size=14, projection_dim=32),
        text_config=LlamaConfig(**{"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                                   "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 40,
                                   "max_position_embeddings": 128, "initializer_range": 0.2, **text}),
        image_token_index=3, vision_feature_layer=-2, vision_feature_select_strategy="default")
    return LlavaForConditionalGeneration(config).eval()


def _inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 40, (2, 24), generator=g)
    ids[:, 2:18] = 3  # 16 image tokens: a 56 px image in 14 px patches
    return {"input_ids": ids, "pixel_values": torch.randn(2, 3, 56, 56, generator=g)}


@torch.no_grad()
def test_upcycled_model_computes_the_dense_logits_whatever_the_routing():
    dense = _dense()
    moe = upcycle(dense, num_experts=4, top_k=2, router_std=1.0, seed=3)
    inputs = _inputs()
    with RouterRecorder(moe) as recorder:
        got = moe(**inputs).logits
    expected = dense(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got - expected).abs().max()
    picked = recorder.outputs[0][2]
    assert len({tuple(sorted(row)) for row in picked.tolist()}) > 1, "the tokens took different experts"
    assert type(moe.model.language_model).__name__ == "MixtralModel"
    text = moe.config.text_config
    assert (text.num_local_experts, text.num_experts_per_tok, text.rope_parameters) == \
        (4, 2, dense.config.text_config.rope_parameters)


@pytest.mark.parametrize("field, value", [("attention_bias", True), ("mlp_bias", True), ("pretraining_tp", 2)])
def test_llama_features_mixtral_lacks_are_refused(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        mixtral_text_config(LlamaConfig(**{field: value}), 4, 2)


def test_top_k_outside_the_experts_is_refused():
    with pytest.raises(ValueError, match="top_k must be in \\[1, num_experts=4\\], got 5"):
        mixtral_text_config(LlamaConfig(), 4, 5)


def _distinct_experts(moe, seed: int = 0) -> None:
    """Give every expert its own weights, so that a swapped or misplaced expert changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in moe.model.language_model.layers:
            for p in (layer.mlp.experts.gate_up_proj, layer.mlp.experts.down_proj):
                p.add_(0.3 * torch.randn(p.shape, generator=g))


@torch.no_grad()
def test_split_experts_and_the_mixtral_checkpoint_keep_every_number(tmp_path):
    moe = upcycle(_dense(), num_experts=3, top_k=2, router_std=1.0, seed=1)
    _distinct_experts(moe)
    inputs = _inputs()
    fused = moe(**inputs).logits
    split_experts(moe)
    assert torch.allclose(moe(**inputs).logits, fused, atol=1e-6)
    save_moe_llava(moe, tmp_path / "m")
    names = set(load_file(tmp_path / "m" / "model.safetensors"))
    layer = "language_model.model.layers.1.block_sparse_moe."
    assert {layer + "gate.weight", layer + "experts.2.w1.weight", layer + "experts.2.w2.weight",
            layer + "experts.2.w3.weight"} <= names
    assert not any(".mlp." in n and n.startswith("language_model.") for n in names)
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    assert torch.allclose(reloaded(**inputs).logits, fused, atol=1e-6)
    w1 = load_file(tmp_path / "m" / "model.safetensors")[layer + "experts.2.w1.weight"]
    assert torch.equal(w1, moe.model.language_model.layers[1].mlp.experts.experts[2].w1.weight)


@torch.no_grad()
def test_routing_mass_equals_a_per_token_loop():
    moe = upcycle(_dense(), num_experts=4, top_k=2, router_std=1.0, seed=2)
    inputs = _inputs()
    seen = []
    handles = [layer.mlp.register_forward_hook(lambda _m, args, _o: seen.append(args[0].reshape(-1, 32)))
               for layer in moe.model.language_model.layers]
    with RouterRecorder(moe) as recorder:
        moe(**inputs)
    for h in handles:
        h.remove()
    groups = (inputs["input_ids"] == 3).long().flatten()  # 1 image, 0 text
    groups[-3:] = -1  # uncounted
    mass = routing_mass(recorder.outputs, groups, 2, 4)
    expected = torch.zeros(2, 2, 4, dtype=torch.float64)
    for layer_index, (layer, hidden) in enumerate(zip(moe.model.language_model.layers, seen)):
        for t, x in enumerate(hidden):
            if groups[t] < 0:
                continue
            logits = layer.mlp.gate.weight @ x
            top = logits.topk(2)
            for e, w in zip(top.indices.tolist(), torch.softmax(top.values, 0).tolist()):
                expected[layer_index, groups[t], e] += w
    assert torch.allclose(mass, expected, atol=1e-5)
    assert torch.allclose(mass.sum(-1), torch.stack([(groups == g).sum() for g in (0, 1)]).double().expand(2, 2))


def test_top_experts_takes_the_largest_mass_per_layer_ties_to_the_lower_index():
    mass = torch.tensor([[1.0, 5.0, 3.0, 5.0], [0.0, 0.0, 2.0, 0.0]])
    assert top_experts(mass, 1).tolist() == [[1], [2]]
    assert top_experts(mass, 2).tolist() == [[1, 3], [0, 2]]
    with pytest.raises(ValueError, match="u must be in \\[1, E=4\\], got 0"):
        top_experts(mass, 0)


def test_random_experts_are_distinct_in_range_sorted_reproducible_and_cover_every_expert():
    picks = random_experts(layers=400, num_experts=4, u=2, seed=7)
    assert picks.shape == (400, 2)
    assert bool((picks[:, 0] < picks[:, 1]).all())  # sorted rows of distinct experts
    assert picks.min() >= 0 and picks.max() <= 3
    assert torch.equal(picks, random_experts(400, 4, 2, seed=7))
    assert not torch.equal(picks, random_experts(400, 4, 2, seed=8))
    pairs = {tuple(row) for row in picks.tolist()}
    assert len(pairs) == 6  # all C(4, 2) pairs drawn; each has chance 1/6 a row, so 400 rows miss one w.p. < 1e-30
    counts = torch.bincount(picks.flatten(), minlength=4)
    # each expert is in a row's pair w.p. 1/2: Binomial(400, 1/2), mean 200, sd 10
    assert bool((counts > 150).all()) and bool((counts < 250).all()), counts
    with pytest.raises(ValueError, match="u must be in \\[1, E=4\\], got 5"):
        random_experts(2, 4, 5, seed=0)


def test_router_load_loss_matches_its_definition():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [9.0, 9.0, 9.0]])
    valid = torch.tensor([True, True, True, False])
    probs = torch.softmax(logits[:3], -1)
    picks = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1]]).float()  # the top 2 of each valid row
    expected = 3 * ((picks.mean(0) / 2) * probs.mean(0)).sum()
    got = router_load_loss([logits, logits], 2, valid)
    assert torch.allclose(got, expected)
    even = router_load_loss([torch.zeros(6, 3)], 3, torch.ones(6, dtype=torch.bool))  # every expert, alike
    assert torch.allclose(even, torch.tensor(1.0))


def test_training_the_top_u_experts_leaves_every_other_weight_bit_identical():
    moe = upcycle(_dense(), num_experts=4, top_k=2, router_std=1.0, seed=4)
    split_experts(moe)
    chosen = torch.tensor([[1], [3]])
    params = train_only_experts(moe, chosen)
    before = {k: v.detach().clone() for k, v in moe.named_parameters()}
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    inputs = _inputs()
    moe.train()
    for _ in range(3):
        loss = F.cross_entropy(moe(**inputs).logits.flatten(0, 1), inputs["input_ids"].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {k for k, v in moe.named_parameters() if not torch.equal(v, before[k])}
    trained = {f"model.language_model.layers.{i}.mlp.experts.experts.{e}.{w}.weight"
               for i, e in ((0, 1), (1, 3)) for w in ("w1", "w2", "w3")}
    routers = {f"model.language_model.layers.{i}.mlp.gate.weight" for i in (0, 1)}
    assert changed == trained | routers
    assert sum(p.numel() for p in params) == 2 * (3 * 32 * 48 + 4 * 32)
    assert all(p.grad is None for layer in experts_of(moe) for e, x in enumerate(layer.experts)
               for p in x.parameters() if not p.requires_grad)


def test_frozen_experts_refuse_a_wrong_number_of_layers():
    moe = upcycle(_dense(), num_experts=4, top_k=2)
    with pytest.raises(ValueError, match="fused; call split_experts"):
        train_only_experts(moe, torch.tensor([[0], [1]]))
    split_experts(moe)
    with pytest.raises(ValueError, match="chosen has 3 rows, expected one per layer \\(2\\)"):
        train_only_experts(moe, torch.tensor([[0], [1], [2]]))


def test_peak_step_bytes_sees_a_temporary_allocation():
    size = 4_000_000

    def step() -> None:
        scratch = torch.ones(size // 4, dtype=torch.float32)
        scratch.sum()

    peak = peak_step_bytes(step)
    assert size <= peak < size + 1_000_000
