"""Recipe: the shipped tiny LLaVA, trained from scratch on procedural scenes in three resumable stages.

1. tower: the CLIP ViT learns per-patch and per-object labels the generator knows (colour, shape, size, letters);
2. cache: the tower is frozen and its feature-layer output is computed once for every training scene;
3. llm: projector + LLaMA learn all of a scene's questions as chat turns over the cached features (the tower's
   forward and backward would otherwise be most of the cost), validated every epoch.
The result is saved in the llava-hf layout with its tokenizer and processor.

    tokencomp train tiny-llava --out runs/tiny-llava [--smoke] [--optimizer adamw]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tokencomp.training import components, scenes
from tokencomp.training.llava_hf import save_llava_hf
from tokencomp.training.tokenizer import build_processor, build_tokenizer


@dataclass
class Config:
    out: str = "runs/tiny-llava"
    seed: int = 0
    optimizer: str = "adamw"
    train_scenes: int = 6000
    val_scenes: int = 200
    tower_steps: int = 400
    tower_batch: int = 16
    tower_lr: float = 2e-3
    llm_epochs: int = 4
    llm_batch: int = 16
    llm_lr: float = 2e-3
    threads: int = 2
    device: str = "cpu"

    @classmethod
    def smoke(cls, out: str) -> Config:
        return cls(out=out, train_scenes=48, val_scenes=16, tower_steps=4, tower_batch=4, llm_epochs=1, llm_batch=8)


_NUMBERS = ("seed", "train_scenes", "val_scenes", "tower_steps", "tower_batch", "tower_lr", "llm_epochs", "llm_batch",
            "llm_lr", "threads")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Config()
    parser.add_argument("--out", default=defaults.out, help="run directory (checkpoints, logs, final model)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run of about a minute, for tests")
    for name in _NUMBERS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(defaults, name)), default=None)
    parser.add_argument("--optimizer", default=None, help=f"one of {', '.join(components.OPTIMIZERS)}")
    parser.add_argument("--device", default=None, help="torch device to train on (default cpu; the shipped run is cpu)")


def config_from_args(args: argparse.Namespace) -> Config:
    config = Config.smoke(args.out) if args.smoke else Config(out=args.out)
    for name in (*_NUMBERS, "optimizer", "device"):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    for name in _NUMBERS:
        if name != "seed" and not getattr(config, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(config, name)}")
    components.make_optimizer(config.optimizer, [torch.nn.Parameter(torch.zeros(1))], 1.0)  # fail fast on a bad name
    try:
        torch.zeros(1, device=config.device)
    except (RuntimeError, AssertionError) as exc:
        raise ValueError(f"--device {config.device!r} is not usable here: {str(exc).splitlines()[0]}") from None
    return config


def _pixels(processor, split: str, indices) -> torch.Tensor:
    images = [scenes.render(scenes.make_scene(split, int(i))) for i in indices]
    return processor.image_processor(images, return_tensors="pt").pixel_values


def _log(out: Path, record: dict) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def train_tower(model, processor, config: Config, out: Path) -> None:
    done = out / "tower.pt"
    if done.exists():
        model.model.vision_tower.load_state_dict(torch.load(done, map_location=config.device))
        return
    heads = components.PatchHeads(model.config.vision_config.hidden_size).to(config.device)
    params = [*model.model.vision_tower.parameters(), *heads.parameters()]
    opt = components.make_optimizer(config.optimizer, params, config.tower_lr)
    rng = np.random.default_rng(config.seed)
    bar = tqdm(range(config.tower_steps), desc="tower")
    for step in bar:
        lr = config.tower_lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / config.tower_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = rng.integers(0, config.train_scenes, config.tower_batch)
        labels = [scenes.patch_labels(scenes.make_scene("train", int(i))) for i in idx]
        labels = {k: torch.from_numpy(np.stack([lab[k] for lab in labels])).to(config.device) for k in labels[0]}
        pixels = _pixels(processor, "train", idx).to(config.device)
        loss, acc = heads.loss(components.tower_features(model, pixels), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", colour=f"{acc['colour']:.2f}", shape=f"{acc['object_shape']:.2f}")
        if (step + 1) % 50 == 0 or step + 1 == config.tower_steps:
            _log(out, {"stage": "tower", "step": step + 1, "loss": round(loss.item(), 4), **acc})
    torch.save(model.model.vision_tower.state_dict(), done)


@torch.no_grad()
def cache_features(model, processor, split: str, count: int, out: Path) -> torch.Tensor:
    """Feature-layer output [count, 576, Dv] (float16, on the CPU and on disk) of the frozen tower."""
    path = out / f"features_{split}_{count}.pt"
    if path.exists():
        return torch.load(path)
    feats = []
    for start in tqdm(range(0, count, 32), desc=f"cache {split}"):
        idx = range(start, min(count, start + 32))
        pixels = _pixels(processor, split, idx).to(model.device)
        feats.append(components.tower_features(model, pixels).half().cpu())
    feats = torch.cat(feats)
    torch.save(feats, path)
    return feats


def _batches(tokenizer, split: str, indices, batch: int, rng) -> list:
    out = []
    for start in range(0, len(indices), batch):
        rows = [components.qa_sequence(tokenizer, scenes.make_scene(split, int(i)).questions, 576, rng)
                for i in indices[start:start + batch]]
        out.append((indices[start:start + batch], *components.pad_batch(rows, tokenizer.pad_token_id)))
    return out


@torch.no_grad()
def validate(model, tokenizer, feats: torch.Tensor, config: Config) -> dict[str, float]:
    """Teacher-forced answer accuracy on the validation scenes, per question family and overall."""
    model.eval()
    right: dict[str, list[bool]] = {}
    for idx, ids, labels, mask, owners in _batches(tokenizer, "val", np.arange(len(feats)), config.llm_batch,
                                                    np.random.default_rng(0)):
        _, ok = components.lm_loss(model, *_to(config.device, ids, labels, mask), _feats(feats, idx, config))
        ok, owners = ok.cpu(), owners[:, 1:]
        for row, i in enumerate(idx):
            for q, question in enumerate(scenes.make_scene("val", int(i)).questions):
                right.setdefault(question["family"], []).append(bool(ok[row][owners[row] == q].all()))
    model.train()
    scores = {family: round(float(np.mean(v)), 4) for family, v in sorted(right.items())}
    return {"overall": round(float(np.mean([x for v in right.values() for x in v])), 4), **scores}


def _to(device: str, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(device) for t in tensors]


def _feats(feats: torch.Tensor, idx, config: Config) -> torch.Tensor:
    return feats[torch.as_tensor(idx)].to(config.device).float()


def train_llm(model, tokenizer, train_feats, val_feats, config: Config, out: Path) -> None:
    params = [*model.model.multi_modal_projector.parameters(), *model.model.language_model.parameters(),
              *model.lm_head.parameters()]
    opt = components.make_optimizer(config.optimizer, params, config.llm_lr)
    state_path, start_epoch = out / "llm.pt", 0
    if state_path.exists():
        state = torch.load(state_path, weights_only=False, map_location=config.device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
    steps_per_epoch = math.ceil(config.train_scenes / config.llm_batch)
    total = steps_per_epoch * config.llm_epochs
    for epoch in range(start_epoch, config.llm_epochs):
        rng = np.random.default_rng(config.seed + epoch)
        batches = _batches(tokenizer, "train", rng.permutation(config.train_scenes), config.llm_batch, rng)
        bar = tqdm(batches, desc=f"llm epoch {epoch + 1}/{config.llm_epochs}")
        for step, (idx, ids, labels, mask, _) in enumerate(bar, start=epoch * steps_per_epoch):
            lr = config.llm_lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / total))
            for group in opt.param_groups:
                group["lr"] = lr
            loss, _ = components.lm_loss(model, *_to(config.device, ids, labels, mask), _feats(train_feats, idx, config))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        val = validate(model, tokenizer, val_feats, config)
        _log(out, {"stage": "llm", "epoch": epoch + 1, "loss": round(loss.item(), 4), "val": val})
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1}, state_path)


def run_recipe(config: Config) -> Path:
    """Train (resuming whatever stage files exist in config.out) and save the model to config.out/model."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=1))
    start = time.time()
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = components.build_model(len(tokenizer), image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                                   pad_id=tokenizer.pad_token_id, bos_id=tokenizer.bos_token_id,
                                   eos_id=tokenizer.eos_token_id).to(config.device)
    train_tower(model, processor, config, out)
    model.model.vision_tower.requires_grad_(False)
    train_feats = cache_features(model, processor, "train", config.train_scenes, out)
    val_feats = cache_features(model, processor, "val", config.val_scenes, out)
    train_llm(model, tokenizer, train_feats, val_feats, config, out)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    path = save_llava_hf(model.cpu().eval(), out / "model", processor)
    _log(out, {"stage": "done", "seconds": round(time.time() - start), "model": str(path)})
    return path


def main(args: argparse.Namespace) -> int:
    run_recipe(config_from_args(args))
    return 0
