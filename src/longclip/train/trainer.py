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
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..errors import TrainingError  # defined with the shared errors, so the CLI catches it without importing torch
from ..models.base import DualEncoder
from ..precision import emulated_autocast_warning
from .checkpointing import list_checkpoints, load_checkpoint, ordinary_permissions, save_checkpoint
from .config import TrainConfig, holdout_rows
from .distributed import DistributedContext, setup_distributed, teardown_distributed
from .losses import LossOutput
from .tasks import Task, get_task

logger = logging.getLogger(__name__)


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

    def __init__(self, output: Path, config: TrainConfig, enabled: bool, resumed_at: int = 0):
        self.enabled = enabled
        self.path = output / "metrics.jsonl"
        self.writers: list[Callable[[dict, int], None]] = []
        if not enabled:
            return
        output.mkdir(parents=True, exist_ok=True)
        self._drop_rows_after(resumed_at)
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

    def _drop_rows_after(self, step: int) -> None:
        """Forget rows a previous run logged after the checkpoint this run resumes from (they are run again)."""
        if not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

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
    description: str | None = None,
) -> dict:
    """Run (or resume) the training loop; returns a summary dict (with the last ``validation`` metrics, if any).

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
        description: Label of the progress bar.

    Raises:
        TrainingError: Too many unreadable images (raised as soon as the share is sure to be exceeded at the end of
            the epoch; ``bad_images.txt`` is written first), or a batch without one readable image.
    """
    model = task.model
    output = Path(config.output)
    checkpoints = output / "checkpoints"
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    if config.warmup_steps >= total_steps and context.is_main:
        logger.warning(
            "the warm-up (%d steps) is not shorter than the run (%d steps): the learning rate never reaches %g",
            config.warmup_steps, total_steps, config.lr,
        )  # fmt: skip
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
    slow = emulated_autocast_warning(config.precision, context.device)
    if slow and context.is_main:
        logger.warning(slow)

    step, progress = 0, {"bad_images": 0, "seen_images": 0, "skipped_steps": 0, "bad": []}
    for resume_from in _resume_candidates(config, checkpoints):
        try:
            step, progress = load_checkpoint(
                resume_from, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler
            )
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            if config.resume != "auto":
                raise
            logger.warning("checkpoint %s cannot be read (%s); trying the one before it", resume_from, e)
            continue
        task.load_counters(progress.get("task", {}))
        logger.info("resumed from %s at step %d", resume_from, step)
        break
    progress.setdefault("bad_shards", 0)

    step_module: nn.Module = task
    if context.enabled:
        # Frozen parameters (a teacher, frozen towers) are identical on every rank and get no gradient: leave them
        # out of DDP's broadcast and gradient buckets.
        task._ddp_params_and_buffers_to_ignore = task.frozen_parameter_names()
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        step_module = DistributedDataParallel(task, device_ids=device_ids)
    reporters = _Reporters(output, config, enabled=context.is_main, resumed_at=step)
    stop_at = total_steps if config.stop_after_steps is None else min(total_steps, step + config.stop_after_steps)

    def save() -> None:
        if context.is_main:
            progress["task"] = task.counters()
            save_checkpoint(
                checkpoints, step, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                progress=progress, keep_last=config.keep_checkpoints, save_model=task.save_model,
            )  # fmt: skip
        context.barrier()

    bar = tqdm(
        total=total_steps, initial=step, unit="step", desc=description, dynamic_ncols=True,
        disable=not (context.is_main and config.progress),
    )  # fmt: skip
    task.train()
    window_start, window_samples = time.perf_counter(), 0
    validation: dict[str, float] = {}
    try:
        while step < stop_at:
            epoch, first = divmod(step, steps_per_epoch)
            for batch in itertools.islice(batches(epoch, first), stop_at - step):
                loss_out = _train_step(
                    step_module, task, optimizer, scheduler, scaler, batch, config, context, autocast_dtype
                )
                step += 1
                bar.update(1)
                _count_batch(progress, batch, loss_out, context)
                # Stop as soon as the epoch's end would fail the check anyway, not hours later.
                images_by_epoch_end = (epoch + 1) * steps_per_epoch * config.batch_size * context.world_size
                _check_bad_images(progress, config, max(images_by_epoch_end, progress["seen_images"]))
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
                    bar.set_postfix(
                        loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", sps=f"{row['samples_per_s']:.1f}"
                    )
                    window_start, window_samples = time.perf_counter(), 0
                if step % config.save_every == 0 and step < stop_at:
                    save()
                if step % steps_per_epoch == 0 or step == total_steps:
                    _check_bad_images(progress, config)
                    if validate is not None and context.is_main:
                        task.eval()
                        validation = validate(model)
                        reporters.log({"step": step, **{f"val/{k}": v for k, v in validation.items()}})
                        task.train()
                    context.barrier()
                if step >= stop_at:
                    break
    except TrainingError:
        _write_bad_images(progress, output, context, bad_image_paths)
        raise
    finally:
        bar.close()
    save()
    _check_bad_images(progress, config)
    _write_bad_images(progress, output, context, bad_image_paths)
    counters = {k: v for k, v in progress.items() if k != "task"}
    summary = {"step": step, "total_steps": total_steps, "finished": step >= total_steps, **counters}
    return {**summary, **task.counters(), **({"validation": validation} if validation else {})}


def _write_bad_images(progress: dict, output: Path, context: DistributedContext, bad_image_paths) -> None:
    if context.is_main and progress["bad"]:
        paths = bad_image_paths(progress["bad"]) if bad_image_paths else [str(i) for i in progress["bad"]]
        output.mkdir(parents=True, exist_ok=True)
        (output / "bad_images.txt").write_text("\n".join(paths) + "\n")
        logger.warning("%d images could not be read; listed in %s", progress["bad_images"], output / "bad_images.txt")


def _resume_candidates(config: TrainConfig, checkpoints: Path) -> list[Path]:
    """Checkpoints to try, best first: the one named, or for ``auto`` every complete one, newest first."""
    if config.resume is None:
        return []
    if config.resume == "auto":
        found = list_checkpoints(checkpoints)
        if not found:
            logger.info("no checkpoint in %s: starting from the beginning", checkpoints)
        return found[::-1]
    return [Path(config.resume)]


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
    progress["bad_shards"] += int(context.sum(len(batch.get("bad_shards", []))))
    if bad:  # the sum is the same on every rank, so all of them take part in the gather
        indices = context.gather_lists([int(i) for i in batch.get("bad_indices", [])])
        progress["bad"].extend(indices[: max(0, 1000 - len(progress["bad"]))])


def _check_bad_images(progress: dict, config: TrainConfig, seen: int | None = None) -> None:
    """Raise if the unreadable share of ``seen`` images (default: those seen so far) is over the limit."""
    early = seen is not None and seen > progress["seen_images"]
    seen, bad = seen or progress["seen_images"], progress["bad_images"]
    if seen and bad / seen > config.max_bad_fraction:
        raise TrainingError(
            f"{bad} of {seen} images ({bad / seen:.1%}) could not be read, more than --max-bad-fraction "
            f"{config.max_bad_fraction:.1%}{' (counting this epoch to its end)' if early else ''}; check the image "
            "paths and --image-root"
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


def train(config: TrainConfig, options=None, description: str | None = None) -> dict:
    """Train with ``config.method`` (Long-CLIP's recipe by default); writes checkpoints, ``metrics.jsonl`` and the
    final model to ``config.output``.

    Args:
        config: The common settings (``TrainConfig.for_method`` gives a method's own defaults).
        options: The method's own settings (its task's ``options_class``); its defaults when None.
        description: Label of the progress bar.

    Returns:
        A summary: steps run, whether the run finished, counters (unreadable images, skipped steps, bad shards, the
        task's own), the last validation metrics and the path of the final model.

    Raises:
        ValueError: ``output`` already holds a run and neither ``resume`` nor ``overwrite`` is set.
    """
    from ..data import SHORT_CAPTION_RULES, read_pairs, split_holdout

    task_class = get_task(config.method)
    options = options if options is not None else task_class.options_class()
    if not isinstance(options, task_class.options_class):
        wanted, got = task_class.options_class.__name__, type(options).__name__
        raise TypeError(f"method {config.method!r} takes {wanted} options, got {got}")
    context = setup_distributed(config.device)
    try:
        _seed_everything(config.seed)
        output = Path(config.output)
        saved = {**asdict(config), "options": asdict(options)}
        _check_output(output, config, saved, context)
        model = task_class.prepare_model(config, options).to(context.device)
        task = task_class(model, options, context)

        validation = None
        if _is_webdataset(config.data):
            batches, steps_per_epoch = _stream_batches(config, task, context)
            bad_paths = None
        else:
            pairs = read_pairs(config.data, config.image_root, SHORT_CAPTION_RULES[config.short_caption])
            held_out = holdout_rows(config)
            if held_out >= len(pairs):
                raise TrainingError(
                    f"{config.data} has {len(pairs)} records and --val-rows {config.val_rows} holds out the first "
                    f"{held_out} (ShareGPT4V-1k, as the original); pass --val-rows 0 or a smaller number"
                )
            validation, pairs = split_holdout(pairs, held_out) if held_out else ([], pairs)
            batches, steps_per_epoch = pair_batches(pairs, task, config, context)

            def bad_paths(indices: list[int]) -> list[str]:
                return [pairs[i].image for i in indices]

        # Written only now that the model and the data are ready: a start that fails leaves no half-made run.
        fresh = context.is_main and not (output / "config.json").exists()
        created = not output.exists()
        if context.is_main:
            output.mkdir(parents=True, exist_ok=True)
            (output / "config.json").write_text(json.dumps(saved, indent=2))
        try:
            summary = fit(
                task, batches, steps_per_epoch, config, context,
                validate=task.validator(validation) if validation else None, bad_image_paths=bad_paths,
                description=description,
            )  # fmt: skip
        except BaseException:
            if fresh:  # e.g. a wrong --image-root, found on the first batch
                _undo_failed_start(output, created)
            raise
        if summary["finished"] and context.is_main:
            final = task.save_final(output, config)
            ordinary_permissions(final)
            summary["model"] = str(final)
            logger.info("saved the trained model to %s", summary["model"])
        context.barrier()
        return summary
    finally:
        teardown_distributed()


# What a run leaves in its output folder (``overwrite`` clears these and nothing else).
_RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "model", "bad_images.txt", "tensorboard", "longclip.pt")
# Settings that may change between a run and its continuation without changing what is trained.
_RESUMABLE = {"resume", "overwrite", "stop_after_steps", "device", "num_workers", "log_every", "report_to",
              "progress", "save_every", "keep_checkpoints"}  # fmt: skip


def _undo_failed_start(output: Path, created: bool) -> None:
    """Remove what a run that failed before its first checkpoint and metrics row wrote: nothing there can be resumed.

    ``config.json``, an empty ``checkpoints`` folder (or one holding only an interrupted save) and the TensorBoard
    log go, and the output folder too if this run created it and nothing is left; ``bad_images.txt`` stays, as the
    report of why the run stopped (the next start replaces it).
    """
    checkpoints = output / "checkpoints"
    if list_checkpoints(checkpoints) or (output / "metrics.jsonl").exists() or (output / "model").exists():
        return
    (output / "config.json").unlink(missing_ok=True)
    for folder in (checkpoints, output / "tensorboard"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
    if created and output.is_dir() and not any(output.iterdir()):
        output.rmdir()


def _check_output(output: Path, config: TrainConfig, settings: dict, context: DistributedContext) -> None:
    """Refuse to mix two runs in one folder; clear it on ``overwrite``; say when a resumed run's settings differ."""
    present = [name for name in _RUN_FILES if (output / name).exists()]
    if present == ["bad_images.txt"]:  # all a start that failed leaves (its report): replaced by this run's
        if context.is_main:
            (output / "bad_images.txt").unlink(missing_ok=True)
            logger.info("removed %s, left by a run that stopped before any checkpoint", output / "bad_images.txt")
        present = []
    if config.resume is None and present:
        if not config.overwrite:
            raise ValueError(
                f"{output} already holds a run ({', '.join(present)}); continue it with --resume auto or start "
                "over with --overwrite"
            )
        if context.is_main:
            for name in present:
                path = output / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            logger.info("cleared the previous run in %s", output)
        context.barrier()
    if config.resume is not None and (output / "config.json").is_file():
        before = json.loads((output / "config.json").read_text())
        changed = sorted(key for key in {*before, *settings} - _RESUMABLE if before.get(key) != settings.get(key))
        if changed and context.is_main:
            logger.warning(
                "resuming a run whose settings differ from this one's: %s",
                ", ".join(f"{key} {before.get(key)!r} -> {settings.get(key)!r}" for key in changed),
            )


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
    from ..data import SHORT_CAPTION_RULES, webdataset_pairs

    model, collate = task.model, _ShardAwareCollate(task.collate)
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
                    short_caption=SHORT_CAPTION_RULES[config.short_caption],
                )  # fmt: skip
                loader = DataLoader(stream, batch_size=config.batch_size, collate_fn=collate,
                                    num_workers=config.num_workers)  # fmt: skip
                yield from loader

        # A resumed run skips the batches this epoch already used (decoded again, then dropped).
        return itertools.islice(endless(), first_step, steps_per_epoch)

    return batches, steps_per_epoch


class _ShardAwareCollate:
    """A task's collate behind which the stream's ``{"bad_shard": url}`` markers are listed as ``bad_shards``.

    The markers are not samples, so no task's own collate ever sees one.
    """

    def __init__(self, collate: Callable[[list], dict]):
        self.collate = collate

    def __call__(self, items: list[dict | None]) -> dict:
        bad_shards = [item["bad_shard"] for item in items if item is not None and "bad_shard" in item]
        batch = self.collate([item for item in items if item is None or "bad_shard" not in item])
        batch["bad_shards"] = bad_shards
        return batch
