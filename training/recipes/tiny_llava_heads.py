"""Tower pre-training heads of the tiny LLaVA recipe (`PatchHeads`): dense per-patch, per-object and per-scene
targets the scene generator knows, read from the tower's feature layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokencomp.training import scenes


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
