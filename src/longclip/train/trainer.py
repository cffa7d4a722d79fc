"""The training loop, and the Long-CLIP recipe that drives it.

``fit`` is method-agnostic: it takes a ``DualEncoder``, an objective (features -> loss) and batches of
``{"pixels", "long_ids", "short_ids"}``, and handles devices, DDP, mixed precision, the warm-up + cosine schedule,
skipping non-finite steps, checkpoints and resume, logging and validation. ``train`` is Long-CLIP's recipe on top:
stretch a CLIP (or continue a Long-CLIP), freeze the kept position rows, read the data, match with primary
components.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..models.base import DualEncoder
from .checkpointing import list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import DistributedContext, setup_distributed, teardown_distributed
from .losses import LongCLIPObjective, LossOutput

logger = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100)  # CLIP clamps its temperature so logits never exceed 100


class TrainingError(RuntimeError):
    """The run cannot go on (too many unreadable images, no data...)."""


class _FeatureStep(nn.Module):
    """The forward pass DDP wraps: normalized features of the images and both captions, and the logit scale."""

    def __init__(self, model: DualEncoder):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, long_ids: torch.Tensor, short_ids: torch.Tensor):
        return (
            self.model.encode_image(pixels, normalize=True),
            self.model.encode_text(long_ids, normalize=True),
            self.model.encode_text(short_ids, normalize=True),
            self.model.logit_scale.exp(),
        )


def cosine_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up from 0, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def epoch_batches(
    num_items: int, batch_size: int, context: DistributedContext, seed: int, epoch: int
) -> list[list[int]]:
    """This rank's batches of one epoch: a seeded shuffle cut into global batches, each rank taking its slice.

    Every rank computes the same permutation, so ranks read distinct items; the tail that does not fill a global
    batch is dropped, so all ranks take the same number of steps.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_items, generator=generator).tolist()
    global_batch = batch_size * context.world_size
    start = context.rank * batch_size
    return [order[i + start : i + start + batch_size] for i in range(0, num_items - global_batch + 1, global_batch)]


class _Reporters:
    """metrics.jsonl always; TensorBoard and Weights & Biases when asked for and installed."""

    def __init__(self, output: Path, config: TrainConfig, enabled: bool):
        self.enabled = enabled
        self.path = output / "metrics.jsonl"
        self.writers: list[Callable[[dict, int], None]] = []
        if not enabled:
            return
        output.mkdir(parents=True, exist_ok=True)
        wanted = {name.strip() for name in config.report_to.split(",") if name.strip()}
        unknown = wanted - {"tensorboard", "wandb"}
        if unknown:
            raise ValueError(f"report_to: unknown {sorted(unknown)}; expected 'tensorboard' and/or 'wandb'")
        if "tensorboard" in wanted:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("report_to=tensorboard needs tensorboard: pip install tensorboard") from e
            writer = SummaryWriter(str(output / "tensorboard"))
            self.writers.append(lambda row, step: [writer.add_scalar(k, v, step) for k, v in _numbers(row).items()])
        if "wandb" in wanted:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("report_to=wandb needs the wandb package: pip install wandb") from e
            run = wandb.init(project="longclip", config=asdict(config), dir=str(output))
            self.writers.append(lambda row, step: run.log(_numbers(row), step=step))

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        for write in self.writers:
            write(row, row["step"])


def _numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}


def fit(
    model: DualEncoder,
    objective: Callable[..., LossOutput],
    batches: Callable[[int, int], Iterable[dict]],
    steps_per_epoch: int,
    config: TrainConfig,
    context: DistributedContext,
    validate: Callable[[DualEncoder], dict[str, float]] | None = None,
    bad_image_paths: Callable[[list[int]], list[str]] | None = None,
) -> dict:
    """Run (or resume) the training loop; returns a summary dict.

    Args:
        model: The model, already on ``context.device``, with frozen parts already frozen.
        objective: ``objective(image, long_text, short_text, logit_scale) -> LossOutput`` on this rank's features.
        batches: ``batches(epoch, first_step)`` yields this rank's collated batches of that epoch from ``first_step``
            on (so a resumed run continues at the same data position).
        steps_per_epoch: Optimizer steps per epoch (equal on every rank).
        config: The run's settings.
        context: The distributed context.
        validate: Called on the main rank after each epoch; returns metrics to log.
        bad_image_paths: Maps dataset indices of unreadable images to their paths, for the report.
    """
    output = Path(config.output)
    checkpoints = output / "checkpoints"
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters,
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(config.warmup_steps, total_steps))
    scaler = torch.amp.GradScaler(context.device.type, enabled=config.precision == "fp16")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)

    step, progress = 0, {"bad_images": 0, "seen_images": 0, "skipped_steps": 0, "svd_failures": 0, "bad": []}
    resume_from = _resume_path(config, checkpoints)
    if resume_from is not None:
        step, progress = load_checkpoint(
            resume_from, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler
        )
        if hasattr(objective, "svd_failures"):
            objective.svd_failures = progress["svd_failures"]
        logger.info("resumed from %s at step %d", resume_from, step)

    step_module = _FeatureStep(model)
    if context.enabled:
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        step_module = DistributedDataParallel(step_module, device_ids=device_ids)
    reporters = _Reporters(output, config, enabled=context.is_main)
    stop_at = total_steps if config.stop_after_steps is None else min(total_steps, step + config.stop_after_steps)

    def save() -> None:
        if context.is_main:
            save_checkpoint(
                checkpoints, step, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                progress=progress, keep_last=config.keep_checkpoints,
            )  # fmt: skip
        context.barrier()

    bar = tqdm(total=total_steps, initial=step, unit="step", disable=not context.is_main, dynamic_ncols=True)
    model.train()
    window_start, window_samples = time.perf_counter(), 0
    while step < stop_at:
        epoch, first = divmod(step, steps_per_epoch)
        for batch in itertools.islice(batches(epoch, first), stop_at - step):
            loss_out = _train_step(
                step_module, objective, optimizer, scheduler, scaler, batch, model, config, context, autocast_dtype
            )
            step += 1
            bar.update(1)
            _count_batch(progress, batch, loss_out, objective, context)
            window_samples += int(batch["pixels"].shape[0]) * context.world_size
            if step % config.log_every == 0 or step == stop_at:
                elapsed = time.perf_counter() - window_start
                row = {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "loss": float(loss_out.loss.detach()),
                    **loss_out.parts,
                    "lr": scheduler.get_last_lr()[0],
                    "logit_scale": float(model.logit_scale.detach().exp()),
                    "samples_per_s": window_samples / max(elapsed, 1e-9),
                    **{k: v for k, v in progress.items() if k != "bad"},
                }
                reporters.log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", sps=f"{row['samples_per_s']:.1f}")
                window_start, window_samples = time.perf_counter(), 0
            if step % config.save_every == 0 and step < stop_at:
                save()
            if step % steps_per_epoch == 0 or step == total_steps:
                _check_bad_images(progress, config)
                if validate is not None and context.is_main:
                    model.eval()
                    reporters.log({"step": step, **{f"val/{k}": v for k, v in validate(model).items()}})
                    model.train()
                context.barrier()
            if step >= stop_at:
                break
    bar.close()
    save()
    _check_bad_images(progress, config)
    if context.is_main and progress["bad"]:
        paths = bad_image_paths(progress["bad"]) if bad_image_paths else [str(i) for i in progress["bad"]]
        (output / "bad_images.txt").write_text("\n".join(paths) + "\n")
        logger.warning("%d images could not be read; listed in %s", progress["bad_images"], output / "bad_images.txt")
    return {"step": step, "total_steps": total_steps, "finished": step >= total_steps, **progress}


def _resume_path(config: TrainConfig, checkpoints: Path) -> Path | None:
    if config.resume is None:
        return None
    if config.resume == "auto":
        found = list_checkpoints(checkpoints)
        if not found:
            logger.info("no checkpoint in %s: starting from the beginning", checkpoints)
        return found[-1] if found else None
    return Path(config.resume)


def _train_step(step_module, objective, optimizer, scheduler, scaler, batch, model, config, context, autocast_dtype):
    device = context.device
    if batch["pixels"].numel() == 0:
        raise TrainingError("no image of a whole batch could be read; check the image paths and --image-root")
    pixels = batch["pixels"].to(device, non_blocking=True)
    long_ids = batch["long_ids"].to(device, non_blocking=True)
    short_ids = batch["short_ids"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        image, long_text, short_text, scale = step_module(pixels, long_ids, short_ids)
    # The loss runs in float32: softmax over a large batch loses too much in half precision.
    loss_out = objective(image.float(), long_text.float(), short_text.float(), scale.float())
    scaler.scale(loss_out.loss).backward()
    finite = context.all_agree(bool(torch.isfinite(loss_out.loss.detach())))
    if finite:
        scaler.unscale_(optimizer)
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    else:
        logger.warning("non-finite loss (%s); skipping this step", float(loss_out.loss.detach()))
        loss_out.parts["skipped"] = 1.0
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return loss_out


def _count_batch(progress: dict, batch: dict, loss_out: LossOutput, objective, context: DistributedContext) -> None:
    bad = context.sum(batch.get("num_bad", 0))
    progress["bad_images"] += int(bad)
    progress["seen_images"] += int(context.sum(batch["pixels"].shape[0])) + int(bad)
    progress["skipped_steps"] += int(loss_out.parts.get("skipped", 0))
    progress["svd_failures"] = getattr(objective, "svd_failures", 0)
    if bad:  # the sum is the same on every rank, so all of them take part in the gather
        indices = context.gather_lists([int(i) for i in batch.get("bad_indices", [])])
        progress["bad"].extend(indices[: max(0, 1000 - len(progress["bad"]))])


def _check_bad_images(progress: dict, config: TrainConfig) -> None:
    seen, bad = progress["seen_images"], progress["bad_images"]
    if seen and bad / seen > config.max_bad_fraction:
        raise TrainingError(
            f"{bad} of {seen} images ({bad / seen:.1%}) could not be read, more than --max-bad-fraction "
            f"{config.max_bad_fraction:.1%}; check the image paths and --image-root"
        )


# --- the Long-CLIP recipe ----------------------------------------------------------------------------------------


def build_model(config: TrainConfig) -> DualEncoder:
    """Load ``config.model``: a 77-token CLIP is stretched to 248 positions, a Long-CLIP is continued as it is."""
    from ..checkpoints import load_clip
    from ..models import LongCLIPModel, stretch_clip
    from ..tokenizer import CLIP_CONTEXT_LENGTH
    from .freezing import freeze_position_rows, freeze_tower

    checkpoint = load_clip(config.model)
    clip = checkpoint.model
    if clip.config.text_config.max_position_embeddings == CLIP_CONTEXT_LENGTH and checkpoint.keep_rows is None:
        stretch_clip(clip, keep=config.keep_positions, mode=config.stretch)
    # Linear stretching changes every row, so no row is "kept" from CLIP; knowledge-preserving stretching kept them.
    freeze_position_rows(clip, config.keep_positions if config.stretch == "kps" else 0)
    if config.freeze_vision:
        freeze_tower(clip, "vision")
    if config.freeze_text:
        freeze_tower(clip, "text")
    return LongCLIPModel.from_checkpoint(checkpoint)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: TrainConfig) -> dict:
    """Fine-tune with Long-CLIP's recipe; writes checkpoints, ``metrics.jsonl`` and the final model to ``output``.

    Returns:
        A summary: steps run, whether the run finished, counters (unreadable images, skipped steps, SVD failures)
        and the path of the final model.
    """
    from ..data import read_pairs, split_holdout

    context = setup_distributed(config.device)
    try:
        _seed_everything(config.seed)
        output = Path(config.output)
        if context.is_main:
            output.mkdir(parents=True, exist_ok=True)
            (output / "config.json").write_text(json.dumps(asdict(config), indent=2))
        model = build_model(config).to(context.device)
        if config.save_pt:  # find out now, not after hours of training
            from ..checkpoints import check_pt_compatible

            check_pt_compatible(model.config)
        objective = LongCLIPObjective(config.pca_components, config.short_loss_weight, config.label_smoothing, context)

        validation = None
        if _is_webdataset(config.data):
            batches, steps_per_epoch = _stream_batches(config, model, context)
            bad_paths = None
        else:
            pairs = read_pairs(config.data, config.image_root)
            validation, pairs = split_holdout(pairs, config.val_rows) if config.val_rows else ([], pairs)
            batches, steps_per_epoch = pair_batches(pairs, model, config, context)

            def bad_paths(indices: list[int]) -> list[str]:
                return [pairs[i].image for i in indices]

        summary = fit(
            model, objective, batches, steps_per_epoch, config, context,
            validate=_validator(validation, config) if validation else None, bad_image_paths=bad_paths,
        )  # fmt: skip
        if summary["finished"] and context.is_main:
            summary["model"] = str(_save_final(model, output, config))
        context.barrier()
        return summary
    finally:
        teardown_distributed()


def pair_batches(
    pairs: list, model: DualEncoder, config: TrainConfig, context: DistributedContext
) -> tuple[Callable[[int, int], Iterator[dict]], int]:
    """Batches of image / caption pairs for ``fit``, and the number of steps per epoch.

    Raises:
        TrainingError: The pairs do not fill one global batch.
    """
    from ..data import CaptionCollator, PairDataset

    dataset, collate = PairDataset(pairs, model.image_transform), CaptionCollator(model.tokenizer)
    steps_per_epoch = len(pairs) // (config.batch_size * context.world_size)
    if steps_per_epoch == 0:
        raise TrainingError(
            f"{len(pairs)} training pairs do not fill one global batch of "
            f"{config.batch_size} x {context.world_size} ranks; lower --batch-size"
        )

    def batches(epoch: int, first_step: int) -> Iterator[dict]:
        plan = epoch_batches(len(pairs), config.batch_size, context, config.seed, epoch)[first_step:]
        loader = DataLoader(
            dataset, batch_sampler=plan, collate_fn=collate, num_workers=config.num_workers,
            pin_memory=context.device.type == "cuda",
        )  # fmt: skip
        for requested, batch in zip(plan, loader, strict=True):
            # Unreadable images come back as None and are dropped by the collator: note which they were.
            batch["bad_indices"] = sorted(set(requested) - set(batch["indices"].tolist()))
            yield batch

    return batches, steps_per_epoch


def _is_webdataset(data: str) -> bool:
    return ".tar" in data or "{" in data


def _stream_batches(config, model, context):
    from ..data import CaptionCollator, webdataset_pairs

    collate = CaptionCollator(model.tokenizer)
    if not config.samples_per_epoch:
        raise ValueError("webdataset data needs --samples-per-epoch (a stream has no length to count epochs by)")
    steps_per_epoch = config.samples_per_epoch // (config.batch_size * context.world_size)
    if steps_per_epoch == 0:
        raise ValueError("--samples-per-epoch is smaller than one global batch")

    def batches(epoch: int, first_step: int) -> Iterator[dict]:
        def endless() -> Iterator[dict]:
            for repeat in itertools.count():  # a rank whose shards run out starts over, so all ranks step together
                stream = webdataset_pairs(
                    config.data, model.image_transform, rank=context.rank, world_size=context.world_size,
                    shuffle_buffer=1000, seed=config.seed * 1_000_003 + epoch * 1_009 + repeat,
                )  # fmt: skip
                loader = DataLoader(stream, batch_size=config.batch_size, collate_fn=collate,
                                    num_workers=config.num_workers)  # fmt: skip
                yield from loader

        # A resumed run skips the batches this epoch already used (decoded again, then dropped).
        return itertools.islice(endless(), first_step, steps_per_epoch)

    return batches, steps_per_epoch


def _validator(pairs, config: TrainConfig) -> Callable[[DualEncoder], dict[str, float]]:
    from ..eval.datasets import RetrievalSet
    from ..eval.runner import score_retrieval

    images = [p.image for p in pairs]
    caption_sets = {
        kind: RetrievalSet(
            f"validation-{kind}", f"first {len(pairs)} rows, {kind} captions", images, texts, list(range(len(pairs)))
        )  # fmt: skip
        for kind, texts in (("long", [p.caption for p in pairs]), ("short", [p.short_caption for p in pairs]))
    }

    def validate(model: DualEncoder) -> dict[str, float]:
        features = model.embed_images(images, skip_errors=True)  # once, for both caption sets
        results = {}
        for kind, dataset in caption_sets.items():
            scores = score_retrieval(model, dataset, features, ks=(1,))
            results.update({f"{kind}/{k}": v for k, v in scores.items() if "recall" in k})
        return results

    return validate


def _save_final(model: DualEncoder, output: Path, config: TrainConfig) -> Path:
    from ..checkpoints import save_longclip_pt
    from .freezing import merge_position_rows

    merge_position_rows(model.clip)
    final = output / "model"
    model.save_pretrained(final)
    if config.save_pt:
        save_longclip_pt(model.clip, output / "longclip.pt")
    logger.info("saved the fine-tuned model to %s", final)
    return final
