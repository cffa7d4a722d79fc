"""The one training loop (``fit``) and the entry that runs a method on a data set (``train``).

``fit`` knows only that a task (``longclip.train.tasks.Task``) turns a batch dict into a ``LossOutput``; it handles
devices, DDP (wrapping the task), mixed precision, the warm-up + cosine schedule, skipping non-finite steps,
checkpoints and resume, logging and validation. ``train`` picks the method (``config.method``), lets its task
prepare the model, reads the data with the task's collator and saves what the task says.
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
from .losses import LossOutput
from .tasks import Task, get_task

logger = logging.getLogger(__name__)

class TrainingError(RuntimeError):
    """The run cannot go on (too many unreadable images, no data...)."""


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
    task: Task,
    batches: Callable[[int, int], Iterable[dict]],
    steps_per_epoch: int,
    config: TrainConfig,
    context: DistributedContext,
    validate: Callable[[DualEncoder], dict[str, float]] | None = None,
    bad_image_paths: Callable[[list[int]], list[str]] | None = None,
) -> dict:
    """Run (or resume) the training loop; returns a summary dict.

    Args:
        task: The method's step, holding the model (already on ``context.device``, frozen parts frozen).
        batches: ``batches(epoch, first_step)`` yields this rank's batches (dicts made by ``task.collate``, with
            ``indices`` and ``num_bad``) of that epoch from ``first_step`` on (so a resumed run continues at the same
            data position).
        steps_per_epoch: Optimizer steps per epoch (equal on every rank).
        config: The run's settings.
        context: The distributed context.
        validate: Called on the main rank after each epoch with the model; returns metrics to log.
        bad_image_paths: Maps dataset indices of unreadable images to their paths, for the report.
    """
    model = task.model
    output = Path(config.output)
    checkpoints = output / "checkpoints"
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    parameters = [p for p in task.parameters() if p.requires_grad]
    if not parameters:
        raise TrainingError("nothing to train: every parameter of the model is frozen")
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

    step, progress = 0, {"bad_images": 0, "seen_images": 0, "skipped_steps": 0, "bad": []}
    resume_from = _resume_path(config, checkpoints)
    if resume_from is not None:
        step, progress = load_checkpoint(
            resume_from, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler
        )
        task.load_counters(progress.get("task", {}))
        logger.info("resumed from %s at step %d", resume_from, step)

    step_module: nn.Module = task
    if context.enabled:
        # Frozen parameters (a teacher, frozen towers) are identical on every rank and get no gradient: leave them
        # out of DDP's broadcast and gradient buckets.
        task._ddp_params_and_buffers_to_ignore = task.frozen_parameter_names()
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        step_module = DistributedDataParallel(task, device_ids=device_ids)
    reporters = _Reporters(output, config, enabled=context.is_main)
    stop_at = total_steps if config.stop_after_steps is None else min(total_steps, step + config.stop_after_steps)

    def save() -> None:
        if context.is_main:
            progress["task"] = task.counters()
            save_checkpoint(
                checkpoints, step, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                progress=progress, keep_last=config.keep_checkpoints,
            )  # fmt: skip
        context.barrier()

    bar = tqdm(total=total_steps, initial=step, unit="step", disable=not context.is_main, dynamic_ncols=True)
    task.train()
    window_start, window_samples = time.perf_counter(), 0
    while step < stop_at:
        epoch, first = divmod(step, steps_per_epoch)
        for batch in itertools.islice(batches(epoch, first), stop_at - step):
            loss_out = _train_step(
                step_module, task, optimizer, scheduler, scaler, batch, config, context, autocast_dtype
            )
            step += 1
            bar.update(1)
            _count_batch(progress, batch, loss_out, context)
            window_samples += len(batch["indices"]) * context.world_size
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
                    **{k: v for k, v in progress.items() if k not in ("bad", "task")},
                    **task.counters(),
                }
                reporters.log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", sps=f"{row['samples_per_s']:.1f}")
                window_start, window_samples = time.perf_counter(), 0
            if step % config.save_every == 0 and step < stop_at:
                save()
            if step % steps_per_epoch == 0 or step == total_steps:
                _check_bad_images(progress, config)
                if validate is not None and context.is_main:
                    task.eval()
                    reporters.log({"step": step, **{f"val/{k}": v for k, v in validate(model).items()}})
                    task.train()
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
    counters = {k: v for k, v in progress.items() if k != "task"}
    return {"step": step, "total_steps": total_steps, "finished": step >= total_steps, **counters, **task.counters()}


def _resume_path(config: TrainConfig, checkpoints: Path) -> Path | None:
    if config.resume is None:
        return None
    if config.resume == "auto":
        found = list_checkpoints(checkpoints)
        if not found:
            logger.info("no checkpoint in %s: starting from the beginning", checkpoints)
        return found[-1] if found else None
    return Path(config.resume)


def _train_step(step_module, task, optimizer, scheduler, scaler, batch, config, context, autocast_dtype):
    if len(batch["indices"]) == 0:
        raise TrainingError("no item of a whole batch could be read; check the image paths and --image-root")
    batch = {k: v.to(context.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    device_type = context.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss_out = step_module(batch)
    scaler.scale(loss_out.loss).backward()
    finite = context.all_agree(bool(torch.isfinite(loss_out.loss.detach())))
    if finite:
        scaler.unscale_(optimizer)
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        task.after_step()
    else:
        logger.warning("non-finite loss (%s); skipping this step", float(loss_out.loss.detach()))
        loss_out.parts["skipped"] = 1.0
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return loss_out


def _count_batch(progress: dict, batch: dict, loss_out: LossOutput, context: DistributedContext) -> None:
    bad = context.sum(batch.get("num_bad", 0))
    progress["bad_images"] += int(bad)
    progress["seen_images"] += int(context.sum(len(batch["indices"]))) + int(bad)
    progress["skipped_steps"] += int(loss_out.parts.get("skipped", 0))
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


# --- running a method on a data set ------------------------------------------------------------------------------


def build_model(config: TrainConfig, options=None) -> DualEncoder:
    """The model ``config.method`` trains, prepared by its task from ``config.model``."""
    task_class = get_task(config.method)
    return task_class.prepare_model(config, options if options is not None else task_class.options_class())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: TrainConfig, options=None) -> dict:
    """Train with ``config.method`` (Long-CLIP's recipe by default); writes checkpoints, ``metrics.jsonl`` and the
    final model to ``config.output``.

    Args:
        config: The common settings (``TrainConfig.for_method`` gives a method's own defaults).
        options: The method's own settings (its task's ``options_class``); its defaults when None.

    Returns:
        A summary: steps run, whether the run finished, counters (unreadable images, skipped steps, the task's own)
        and the path of the final model.
    """
    from ..data import read_pairs, split_holdout

    task_class = get_task(config.method)
    options = options if options is not None else task_class.options_class()
    if not isinstance(options, task_class.options_class):
        wanted, got = task_class.options_class.__name__, type(options).__name__
        raise TypeError(f"method {config.method!r} takes {wanted} options, got {got}")
    context = setup_distributed(config.device)
    try:
        _seed_everything(config.seed)
        output = Path(config.output)
        if context.is_main:
            output.mkdir(parents=True, exist_ok=True)
            saved = {**asdict(config), "options": asdict(options)}
            (output / "config.json").write_text(json.dumps(saved, indent=2))
        model = task_class.prepare_model(config, options).to(context.device)
        task = task_class(model, options, context)

        validation = None
        if _is_webdataset(config.data):
            batches, steps_per_epoch = _stream_batches(config, task, context)
            bad_paths = None
        else:
            pairs = read_pairs(config.data, config.image_root)
            validation, pairs = split_holdout(pairs, config.val_rows) if config.val_rows else ([], pairs)
            batches, steps_per_epoch = pair_batches(pairs, task, config, context)

            def bad_paths(indices: list[int]) -> list[str]:
                return [pairs[i].image for i in indices]

        summary = fit(
            task, batches, steps_per_epoch, config, context,
            validate=_validator(validation, config) if validation else None, bad_image_paths=bad_paths,
        )  # fmt: skip
        if summary["finished"] and context.is_main:
            summary["model"] = str(task.save_final(output, config))
            logger.info("saved the trained model to %s", summary["model"])
        context.barrier()
        return summary
    finally:
        teardown_distributed()


def pair_batches(
    pairs: list, task: Task, config: TrainConfig, context: DistributedContext
) -> tuple[Callable[[int, int], Iterator[dict]], int]:
    """Batches of image / caption pairs for ``fit``, and the number of steps per epoch.

    Raises:
        TrainingError: The pairs do not fill one global batch.
    """
    from ..data import PairDataset

    dataset, collate = PairDataset(pairs, task.model.image_transform), task.collate
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


def _stream_batches(config, task, context):
    from ..data import webdataset_pairs

    model, collate = task.model, task.collate
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
