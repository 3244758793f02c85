"""Importance signals against transformers' own eager attention and hand computation."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from tokencomp.base import Signals
from tokencomp.signals import (
    cls_attention,
    feature_norm,
    qk_from_fused_qkv,
    qk_from_hf_clip_layer,
    question_ids,
    resolve_importance,
    text_relevance,
)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=56, patch_size=14)
    config._attn_implementation = "eager"  # the only implementation that returns attention maps
    return CLIPVisionModel(config).eval()


@pytest.mark.parametrize("layer_idx", [0, 1, 2])
def test_cls_attention_matches_eager_attention_map(clip, layer_idx):
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        out = clip(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
        layer = clip.encoder.layers[layer_idx]
        q, k = qk_from_hf_clip_layer(layer, out.hidden_states[layer_idx][0])
    expected = out.attentions[layer_idx][0, :, 0, 1:].mean(dim=0)  # [16]
    got = cls_attention(q, k, num_heads=4)
    assert got.shape == (16,)
    assert torch.allclose(got, expected, atol=1e-6)


def test_fused_qkv_weights_give_the_same_q_k(clip):
    layer = clip.encoder.layers[1]
    attn = layer.self_attn
    fused = torch.nn.Module()
    fused.layer_norm1 = layer.layer_norm1
    fused.self_attn = torch.nn.Module()
    fused.self_attn.qkv_proj = torch.nn.Linear(32, 96)
    with torch.no_grad():
        fused.self_attn.qkv_proj.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        fused.self_attn.qkv_proj.bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        hidden = torch.randn(17, 32)
        for a, b in zip(qk_from_fused_qkv(fused, hidden), qk_from_hf_clip_layer(layer, hidden)):
            assert torch.allclose(a, b, atol=1e-6)


def test_text_relevance_and_norm_by_hand():
    tokens = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = 2**-0.5
    assert torch.allclose(text_relevance(tokens, text), torch.tensor([0.5, 0.5, s]))
    assert torch.allclose(feature_norm(tokens), torch.tensor([1.0, 2.0, 2**0.5]))


def test_resolve_importance_prefers_explicit_and_normalises():
    tokens = torch.randn(4, 3)
    r = resolve_importance(tokens, Signals(importance=torch.tensor([2.0, 4.0, 3.0, 6.0])), "m")
    assert torch.allclose(r, torch.tensor([0.0, 0.5, 0.25, 1.0]))
    with pytest.raises(ValueError, match="method 'm' needs an importance signal"):
        resolve_importance(tokens, Signals(), "m")


def test_question_ids_cut_the_template_head_and_tail_by_hand():
    head, tail, image = [1, 2, 9], [3, 4], 9  # e.g. "USER:" ":" "<image>" ... "ASSISTANT" ":"
    assert question_ids([1, 2, 9, 9, 9, 7, 8, 3, 4], head, tail, image) == [7, 8]
    assert question_ids([0, 1, 2, 9, 7, 8, 3, 4], head, tail, image) == [7, 8], "a BOS before the head is cut too"
    assert question_ids([5, 9, 7, 8, 3, 4], head, tail, image) == [5, 7, 8, 3, 4], "not this template: all text"
    assert question_ids([1, 2, 9, 7, 8, 6], head, tail, image) == [1, 2, 7, 8, 6], "no tail: all text"
    assert question_ids([1, 2, 9, 3, 4], head, tail, image) == [1, 2, 3, 4], "no words between: all text"


def test_received_attention_equals_a_loop_over_heads_and_queries():
    from tokencomp.signals import received_attention

    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)  # 5 tokens, 2 heads of width 4
    expected = torch.zeros(5)
    for h in range(2):
        qh, kh = q[:, 4 * h:4 * h + 4], k[:, 4 * h:4 * h + 4]
        for i in range(5):
            expected += torch.softmax(torch.stack([qh[i] @ kh[j] / 2.0 for j in range(5)]), dim=0) / 10
    got = received_attention(q, k, 2)
    assert torch.allclose(got, expected, atol=1e-6) and torch.isclose(got.sum(), torch.tensor(1.0))
