"""The toy base model: a tiny Llama pretrained on the base corpus, built once and cached.

The cache folder is ``$LAYERPROBE_CACHE/toyworld/<hash of the base config>/`` (default cache
``~/.cache/layerprobe``, as for the model presets). It is built in a temporary folder and renamed into
place under a file lock, so two processes never see or write half a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

from layerprobe.core.config_data import ToyWorldConfig
from layerprobe.sources.data import pack_texts
from layerprobe.sources.presets import cache_root
from layerprobe.sources.toyworld import world as W
from layerprobe.sources.toyworld.tokenizer import build_tokenizer

BUILD_VERSION = 3  # bump when the build recipe changes, so old caches are not reused
# The base is pretrained on one torch thread whatever the run uses: float sums split over threads round
# differently, so bases built on 1 and 2 threads differed (by 1e-5 in their everyday-text loss), and the default run
# on them read cloze 0.549 and 0.625 after SFT. On one thread, the same CPU always builds the same bits.
BUILD_THREADS = 1


def base_dir(cfg: ToyWorldConfig) -> Path:
    key = json.dumps({"version": BUILD_VERSION, **cfg.base_key()}, sort_keys=True)
    return cache_root() / "toyworld" / hashlib.sha256(key.encode()).hexdigest()[:16]


def make_world(cfg: ToyWorldConfig) -> W.World:
    return W.make_world(cfg.seed, cfg.base_people, cfg.base_orgs, cfg.cpt_people, cfg.cpt_orgs)


def base_texts(cfg: ToyWorldConfig) -> list[str]:
    return W.base_corpus(make_world(cfg), cfg.base_docs_per_entity, cfg.everyday_docs, cfg.seed)


def ensure_base(cfg: ToyWorldConfig, progress: bool = False) -> Path:
    """The cached base model folder for ``cfg`` (model + tokenizer), built first if missing."""
    from filelock import FileLock

    final = base_dir(cfg)
    if (final / "build.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "build.json").is_file():  # another process built it while we waited
            return final
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _build(cfg, tmp, progress)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build(cfg: ToyWorldConfig, out: Path, progress: bool) -> None:
    import torch

    t0 = time.time()
    docs = base_texts(cfg)
    # The tokenizer also reads the name and attribute pools, so CPT names (unseen in pretraining) still
    # split into a few known pieces: a vocabulary, not facts.
    pools = [
        " ".join(p) for p in (W.FAMILY, W.GIVEN, W.CITIES, W.JOBS, W.HOBBIES, W.ORG_HEADS, W.ORG_KINDS, W.PRODUCTS)
    ] * 2
    tok = build_tokenizer(docs + pools, cfg.vocab_size)
    blocks = torch.tensor(pack_texts(tok, docs, cfg.block_size))
    if blocks.shape[1] != cfg.block_size:
        raise ValueError(f"the base corpus has fewer tokens than one block of {cfg.block_size}; raise its size")
    model = _initial_model(cfg, tok)
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        losses = _pretrain(model, blocks, cfg, progress)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    last = losses[-10:]
    info = {
        "config": cfg.base_key(),
        "version": BUILD_VERSION,
        "threads": BUILD_THREADS,
        "tokens_per_epoch": int(blocks.numel()),
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": sum(last) / len(last),
        "loss_curve": losses[:: max(1, len(losses) // 50)],
        "seconds": round(time.time() - t0, 1),
    }
    (out / "build.json").write_text(json.dumps(info, indent=2))


def architecture(cfg: ToyWorldConfig, tok=None):
    """The base model's LlamaConfig; without the tokenizer (not built yet) its vocabulary size and special token ids
    are the config's and the defaults', enough for the layer and module names a preflight check reads."""
    from transformers import LlamaConfig

    ids = {}
    if tok is not None:
        ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return LlamaConfig(
        vocab_size=len(tok) if tok is not None else cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=3 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4 * cfg.block_size,
        tie_word_embeddings=False,
        **ids,
    )


def _initial_model(cfg: ToyWorldConfig, tok):
    """A small Llama with random weights drawn from ``cfg.seed``."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(architecture(cfg, tok))


def _pretrain(model, blocks, cfg: ToyWorldConfig, progress: bool) -> list[float]:
    """Next-token pretraining on shuffled blocks (AdamW, warm-up then cosine to 10 %); returns the step losses."""
    import torch
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.base_lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, cfg.base_steps // 10)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, cfg.base_steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = random.Random(cfg.seed)
    order: list[int] = []
    losses = []
    model.train()
    bar = tqdm(range(cfg.base_steps), desc="  build toy base model", disable=not progress, unit="step", leave=False)
    for _ in bar:
        if len(order) < cfg.base_batch_size:
            perm = list(range(len(blocks)))
            rng.shuffle(perm)
            order.extend(perm)
        idx, order = order[: cfg.base_batch_size], order[cfg.base_batch_size :]
        batch = blocks[idx]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses
