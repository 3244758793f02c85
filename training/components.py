"""Training components for the tiny LLaVA recipe: the model shape, per-patch tower heads, batching of QA turns
on cached tower features, and the optimizer registry (trainers are swapped by name)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from tokencomp.training import scenes

IGNORE = -100


def build_model(vocab_size: int, *, image_token_id: int, pad_id: int, bos_id: int, eos_id: int,
                vision_width: int = 128, vision_layers: int = 5, text_width: int = 128, text_layers: int = 4
                ) -> LlavaForConditionalGeneration:
    """The shipped shape: CLIP ViT (patch 14, 336 px -> 576 patches + CLS, features from layer -2), 2-layer GELU
    projector, LLaMA decoder. LLM heads are 32 wide: vLLM's CPU attention supports head sizes 32, 64, 80, ..."""
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=vision_width, intermediate_size=4 * vision_width,
                                       num_hidden_layers=vision_layers, num_attention_heads=vision_width // 32,
                                       image_size=scenes.SIZE, patch_size=scenes.PATCH, projection_dim=vision_width),
        text_config=LlamaConfig(hidden_size=text_width, intermediate_size=3 * text_width,
                                num_hidden_layers=text_layers, num_attention_heads=text_width // 32,
                                num_key_value_heads=text_width // 32, vocab_size=vocab_size,
                                max_position_embeddings=1024, bos_token_id=bos_id, eos_token_id=eos_id,
                                pad_token_id=pad_id, tie_word_embeddings=False),
        image_token_index=image_token_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    return LlavaForConditionalGeneration(config)


def tower_hidden(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """Output [B, 577, Dv] (CLS first) of the feature layer. Layers after it are skipped: their output is
    never used (vLLM does not even build them), so training them would only cost time."""
    vision = model.model.vision_tower
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
    layers = vision.encoder.layers
    for layer in layers[:len(layers) + 1 + model.config.vision_feature_layer]:
        hidden = layer(hidden, None)
    return hidden


def tower_features(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch features [B, 576, Dv] of the feature layer (-2), CLS dropped: what the projector receives."""
    return tower_hidden(model, pixel_values)[:, 1:]


class PatchHeads(torch.nn.Module):
    """Dense pre-training targets for the tower (from `scenes.patch_labels` / `scene_labels`):

    - per patch: colour (every patch; 0 says "no object"), shape, size, sign letter and its slot (on the
      patches that carry one), and whether the patch holds an object's centre;
    - per object, from features pooled over its patches: colour, shape, size and centre position (a patch
      rarely shows a whole shape; the pooled target puts object context and location into each of its patches);
    - per scene, from CLS: which (colour, shape) pairs occur and whether there is a sign.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.sizes = {"colour": len(scenes.COLOURS) + 1, "shape": len(scenes.SHAPES) + 1,
                      "size": len(scenes.SIZES) + 1, "letter": len(scenes.LETTERS) + 1, "slot": 5, "centre": 2}
        self.patch = torch.nn.ModuleDict({k: torch.nn.Linear(width, n) for k, n in self.sizes.items()})
        self.object = torch.nn.ModuleDict({k: torch.nn.Linear(width, self.sizes[k]) for k in ("colour", "shape", "size")})
        self.position = torch.nn.Linear(width, 2)
        self.scene = torch.nn.Linear(width, len(scenes.COLOURS) * len(scenes.SHAPES) + 1)

    def loss(self, hidden: torch.Tensor, labels: dict[str, torch.Tensor], scene: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """hidden [B, 577, D] (CLS first); labels: name -> [B, 576] int64, plus "position" [B, 576, 2] (the
        covering object's centre, in [0, 1]); scene [B, S] multi-hot. Returns the summed loss and accuracies."""
        feats = hidden[:, 1:]
        total, acc = feats.new_zeros(()), {}
        for name, head in self.patch.items():
            logits, target = head(feats), labels[name]
            # Colour and centre are learned on every patch; shape, size, letter and slot only on the patches
            # that carry one, or the background's overwhelming majority drowns them out.
            every = name in ("colour", "centre")
            fg = target > 0
            if every:
                weight = feats.new_tensor([1.0, 20.0]) if name == "centre" else None  # ~5 centres in 576 patches
                total = total + F.cross_entropy(logits.flatten(0, 1), target.flatten(), weight=weight)
            elif fg.any():
                total = total + F.cross_entropy(logits[fg], target[fg])
            acc[name] = float((logits.argmax(-1)[fg] == target[fg]).float().mean()) if fg.any() else 1.0
        obj = labels["object"]
        n_obj = int(obj.max()) + 1
        index = (obj + torch.arange(len(obj), device=obj.device)[:, None] * n_obj).flatten()  # object id unique across the batch
        pooled = feats.new_zeros(len(obj) * n_obj, feats.shape[-1]).index_add_(0, index, feats.flatten(0, 1))
        counts = feats.new_zeros(len(obj) * n_obj).index_add_(0, index, feats.new_ones(index.shape))
        keep = (counts > 0) & (torch.arange(len(counts), device=obj.device) % n_obj != 0)
        pooled = pooled[keep] / counts[keep, None]
        for name, head in self.object.items():
            target = obj.new_zeros(len(counts)).scatter_(0, index, labels[name].flatten())[keep]
            logits = head(pooled)
            total = total + F.cross_entropy(logits, target)
            acc[f"object_{name}"] = float((logits.argmax(-1) == target).float().mean())
        where = feats.new_zeros(len(counts), 2).index_copy_(0, index, labels["position"].flatten(0, 1))[keep]
        guess = self.position(pooled)
        total = total + 5 * F.smooth_l1_loss(guess, where, beta=0.02)  # bounded gradient while features are raw
        acc["object_position_px"] = float((guess.detach() - where).abs().mean()) * scenes.SIZE
        logits = self.scene(hidden[:, 0])
        total = total + F.binary_cross_entropy_with_logits(logits, scene)
        acc["scene"] = float(((logits > 0) == (scene > 0.5)).all(-1).float().mean())
        return total, acc


def qa_sequence(tokenizer, questions: list[dict], n_image_tokens: int, rng: np.random.Generator
                ) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(input ids, labels, owners, turns, positions) for one image and all its questions, packed: a shared prefix
    "USER: <image>*n" then, in random order, each question's " ... ASSISTANT: answer </s>" as if it were the
    only one. turns[t] is 0 on the prefix and i + 1 on the tokens of question i: `pad_batch` lets a turn see
    only the prefix and itself, so no turn reads another's answer (trained on one sequence, the LLM would
    otherwise learn to answer from earlier answers instead of the image) and every turn matches a single-
    question prompt at inference (positions restart after the prefix). Only answers (and their </s>) are trained
    on; owners[t] is the index of the question whose answer token t is (-1 elsewhere)."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    eos = tokenizer.eos_token_id
    ids, labels, owners, turns, positions = [], [], [], [], []
    for i in rng.permutation(len(questions)):
        q = questions[int(i)]
        prompt = tokenizer("USER: " + q["question"] + " ASSISTANT:", add_special_tokens=False).input_ids
        if not ids:  # the shared prefix: "USER :" and the image
            prefix = 2 + n_image_tokens
            ids, labels, owners = prompt[:2] + [image_id] * n_image_tokens, [IGNORE] * prefix, [-1] * prefix
            turns, positions = [0] * prefix, list(range(prefix))
        answer = tokenizer(q["answer"], add_special_tokens=False).input_ids + [eos]
        ids += prompt[2:] + answer
        labels += [IGNORE] * (len(prompt) - 2) + answer
        owners += [-1] * (len(prompt) - 2) + [int(i)] * len(answer)
        turns += [int(i) + 1] * (len(prompt) - 2 + len(answer))
        positions += range(prefix, prefix + len(prompt) - 2 + len(answer))
    return ids, labels, owners, turns, positions


def lm_loss(model: LlavaForConditionalGeneration, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
            positions: torch.Tensor, feats: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Next-token loss on answer tokens. ids/labels/positions [B, L] and mask [B, 1, L, L] from `pad_batch`;
    feats [M, Dv]: the features of every image id in `ids`, row-major (a row may hold any number of image
    ids). Returns (loss, right [B, L - 1]: the token at each position after the first predicted right, the
    LLM's hidden states: embeddings, then the output of each layer)."""
    embed = model.get_input_embeddings()
    is_image = ids == model.config.image_token_index
    inputs = embed(ids.masked_fill(is_image, 0))
    inputs = inputs.masked_scatter(is_image[..., None], model.model.multi_modal_projector(feats).to(inputs.dtype))
    out = model.model.language_model(inputs_embeds=inputs, attention_mask=mask.to(inputs.dtype),
                                     position_ids=positions, output_hidden_states=True)
    logits = model.lm_head(out.last_hidden_state[:, :-1])
    target = labels[:, 1:]
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)
    return loss, logits.argmax(-1) == target, out.hidden_states


def mention_targets(tokenizer, ids: torch.Tensor, graphs: list[scenes.Scene]) -> torch.Tensor:
    """[B, L, 3] (size index, centre x, centre y in pixels) of the object named at each token that ends a
    "colour shape" mention of an object the scene holds exactly once; -1 on every other token."""
    colours = {tokenizer.convert_tokens_to_ids(c): c for c in scenes.COLOURS}
    shapes = {tokenizer.convert_tokens_to_ids(s): s for s in scenes.SHAPES}
    out = torch.full((*ids.shape, 3), -1)
    for row, graph in enumerate(graphs):
        named = {o.name: o for o in scenes.unique(graph.objects, lambda o: o.name)}
        tokens = ids[row].tolist()
        for t in range(1, len(tokens)):
            o = named.get(f"{colours.get(tokens[t - 1])} {shapes.get(tokens[t])}")
            if o is not None:
                out[row, t] = torch.tensor([list(scenes.SIZES).index(o.size), o.x, o.y])
    return out


def relation_targets(tokenizer, ids: torch.Tensor, mentions: torch.Tensor) -> torch.Tensor:
    """[B, L, 3] (centre x, y in pixels and size index of the first object a question names minus the second's)
    at the token that ends the second mention ("Is the red circle left of the blue square ?" -> at "square");
    NaN on every other token. mentions [B, L, 3] from `mention_targets` for the same ids; a question ends at
    its "?"."""
    end = tokenizer.convert_tokens_to_ids("?")
    out = torch.full((*ids.shape, 3), float("nan"))
    for row in range(len(ids)):
        first = None
        for t, token in enumerate(ids[row].tolist()):
            if token == end:
                first = None
            elif mentions[row, t, 0] >= 0:
                if first is None:
                    first = t
                else:
                    out[row, t] = (mentions[row, first] - mentions[row, t]).roll(-1).float()
    return out


def letter_targets(tokenizer, labels: torch.Tensor) -> torch.Tensor:
    """[B, L] index into scenes.LETTERS of the sign letter that the token after each position spells (a
    single-letter word piece, "a" or "##a", of a text answer); -1 elsewhere. Aligned like `mention_targets`:
    position t holds the letter that the logits at t predict."""
    table = torch.full((len(tokenizer),), -1)
    for i, c in enumerate(scenes.LETTERS):
        table[tokenizer.convert_tokens_to_ids(c)] = table[tokenizer.convert_tokens_to_ids(f"##{c}")] = i
    out = torch.full(labels.shape, -1)
    nxt = labels[:, 1:]
    out[:, :-1] = torch.where(nxt >= 0, table[nxt.clamp(min=0)], -1)
    return out


class LayerProbe(torch.nn.Module):
    """Training-only deep supervision of the LLM (not saved with the model): linear read-outs of the hidden
    state after `layer` layers.

    - At each token that ends a mention of an object ("... the red circle ..."): that object's size and centre.
      Spatial and size questions compare two named objects; trained on answers alone the LLM never finds that
      circuit (it attends to both names alike and stays at the answer prior), but once every mention has
      fetched its own object halfway up, the layers above only compare two fixed-offset tokens. (In our trials
      on two-object scenes both families stayed at their priors without it, rose well above with it at layer
      2 of 4, and not at all with it at the last layer.)
    - At each token of a sign's text answer: the letter it is to spell next, so reading, too, fetches the
      letter patch in the middle of the LLM and the layers above only copy it out.
    - One layer higher, at the second mention of a question: how far the first named object lies right of and
      below the second, and how many size steps bigger it is (`relation_targets`). Mentions that each hold
      their object's place do not make a spatial answer by themselves: the LLM must subtract one from the
      other, a step that answers alone never taught it (spatial stayed at its prior even with mentions placed
      to ~15 px).
    """

    def __init__(self, width: int, layer: int = 2) -> None:
        super().__init__()
        self.layer = layer
        self.size = torch.nn.Linear(width, len(scenes.SIZES))
        self.position = torch.nn.Linear(width, 2)
        self.letter = torch.nn.Linear(width, len(scenes.LETTERS))
        self.relation = torch.nn.Linear(width, 3)

    def loss(self, hidden_states: tuple[torch.Tensor, ...], mentions: torch.Tensor | None, letters: torch.Tensor,
             relations: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """hidden_states from `lm_loss`; mentions [B, L, 3] from `mention_targets` (None: no mention targets),
        letters [B, L] from `letter_targets` and relations [B, L, 3] from `relation_targets` (None: none), for
        the same ids."""
        hidden, total, stats = hidden_states[self.layer], hidden_states[0].new_zeros(()), {}
        if mentions is not None and (where := mentions[..., 0] >= 0).any():
            state, target = hidden[where], mentions[where]
            size = self.size(state)
            guess, centre = self.position(state), target[:, 1:].to(state.dtype) / scenes.SIZE
            total = total + F.cross_entropy(size, target[:, 0]) + 5 * F.smooth_l1_loss(guess, centre, beta=0.02)
            stats["mention_size"] = float((size.argmax(-1) == target[:, 0]).float().mean())
            stats["mention_position_px"] = float((guess.detach() - centre).abs().mean()) * scenes.SIZE
        where = letters >= 0
        if where.any():
            logits = self.letter(hidden[where])
            total = total + F.cross_entropy(logits, letters[where])
            stats["reading"] = float((logits.argmax(-1) == letters[where]).float().mean())
        if relations is not None and (where := ~relations[..., 0].isnan()).any():
            guess = self.relation(hidden_states[self.layer + 1][where])
            target = relations[where].to(guess.dtype) / guess.new_tensor([scenes.SIZE, scenes.SIZE, 2])
            total = total + 5 * F.smooth_l1_loss(guess, target, beta=0.02)
            place, steps = guess.detach()[:, :2], guess.detach()[:, 2]
            stats["relation_px"] = float((place - target[:, :2]).abs().mean()) * scenes.SIZE
            stats["relation_sign"] = float(((place > 0) == (target[:, :2] > 0)).float().mean())
            if (differ := target[:, 2] != 0).any():
                stats["relation_size"] = float(((steps[differ] > 0) == (target[differ, 2] > 0)).float().mean())
        return total, stats


def pad_batch(rows: list[tuple[list[int], list[int], list[int], list[int], list[int]]], pad_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, labels, mask, positions, owners) from qa_sequence rows, padded on the right. mask [B, 1, L, L] is
    additive (0 or the dtype's minimum): a token sees the earlier tokens of the prefix and of its own turn. A
    padding token sees only itself."""
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), IGNORE)
    owners = torch.full((len(rows), width), -1)
    turns = torch.full((len(rows), width), -1)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        n = len(row[0])
        for out, values in zip((ids, labels, owners, turns, positions), row):
            out[r, :n] = torch.tensor(values)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = (turns[:, :, None] == turns[:, None, :]) | (turns[:, None, :] == 0)
    allowed = (causal & same & (turns[:, None, :] >= 0)) | torch.eye(width, dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return ids, labels, mask[:, None], positions, owners


def adamw(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))


# Trainers are looked up by name so later ones (SAM family, sparse, distillation) plug into the same recipe.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"adamw": adamw}


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr)
