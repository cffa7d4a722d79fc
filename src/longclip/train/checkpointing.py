"""Training checkpoints: everything needed to continue a run exactly, written atomically, read without pickle.

A checkpoint is a directory ``step-000123/`` holding ``model/`` (the model as ``longclip.load`` reads it, so a run
can be evaluated midway), ``model.safetensors`` (the trained module's exact state, the task's extra state
included), ``optimizer.safetensors`` (every tensor of the optimizer state), ``rng.safetensors`` (torch's generator
states) and ``state.json`` (step, data position, scheduler, grad-scaler, optimizer hyper-parameters, Python and
NumPy generator states, counters). It is written into a temporary sibling directory, each file fsync'ed, then
renamed into place: a process killed while saving leaves at most a stray temporary directory, which readers ignore
and the next save removes, and the previous checkpoint intact. Files get the permissions the umask gives ordinary
files.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

_PREFIX = "step-"
_TMP_MARK = ".tmp-"


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (temporary leftovers of interrupted saves skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.iterdir()
        if p.is_dir() and p.name.startswith(_PREFIX) and _TMP_MARK not in p.name and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    progress: dict,
    keep_last: int = 3,
    save_model: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint for ``step`` atomically and delete all but the newest ``keep_last``.

    Args:
        progress: JSON-serialisable run position (epoch, batch in epoch, counters...), returned by ``load_checkpoint``.
        save_model: Writes the model, as ``longclip.load`` reads it, into the directory it is given (``model/``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    for leftover in directory.glob(f"{_PREFIX}*{_TMP_MARK}*"):  # of saves killed midway (only one process saves)
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = directory / f"{final.name}{_TMP_MARK}{os.getpid()}"
    tmp.mkdir()
    if save_model is not None:
        save_model(tmp / "model")

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, tmp / "model.safetensors")
    optimizer_tensors, optimizer_meta = _optimizer_to_files(optimizer)
    save_file(optimizer_tensors, tmp / "optimizer.safetensors")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, tmp / "rng.safetensors")
    numpy_state = np.random.get_state()
    state = {
        "step": step,
        "progress": progress,
        "optimizer": optimizer_meta,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "python_random": _jsonable(random.getstate()),
        "numpy_random": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }
    (tmp / "state.json").write_text(json.dumps(state))
    ordinary_permissions(tmp)
    for file in tmp.rglob("*"):
        if file.is_file():
            _fsync_file(file)
    _fsync_dir(tmp)

    if final.exists():  # saving the same step again (after a resume): swap atomically, then drop the old one
        old = directory / f"{final.name}{_TMP_MARK}old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(directory)

    for stale in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def ordinary_permissions(directory: Path) -> None:
    """Give every file under ``directory`` what the umask gives a new file (safetensors writes 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [Path(directory), *Path(directory).rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> tuple[int, dict]:
    """Restore everything ``save_checkpoint`` wrote; returns ``(step, progress)``.

    Raises:
        FileNotFoundError: ``path`` is not a complete checkpoint directory.
        ValueError: The saved model does not match ``model`` (names the differing tensors).
    """
    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path} is not a training checkpoint (no state.json)")
    state = json.loads((path / "state.json").read_text())
    device = next(model.parameters()).device
    weights = load_file(path / "model.safetensors", device=str(device))
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or extra or wrong:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected {extra[:5]}, "
            f"shape differs {[(k, tuple(weights[k].shape), tuple(expected[k].shape)) for k in wrong[:5]]}"
        )
    model.load_state_dict(weights)
    optimizer.load_state_dict(
        _optimizer_from_files(load_file(path / "optimizer.safetensors", device=str(device)), state["optimizer"])
    )
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])

    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["torch"])
    cuda_states = [rng[f"cuda.{i}"] for i in range(len(rng) - 1) if f"cuda.{i}" in rng]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    random.setstate(_tuplify(state["python_random"]))
    kind, keys, *rest = state["numpy_random"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    return state["step"], state["progress"]


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value
