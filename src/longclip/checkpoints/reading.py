"""Reading checkpoint files into state dicts without ever running code from them.

Three containers reach us:

* safetensors files: plain tensors, safe by construction;
* ``torch.save`` pickles (``.pt``, ``.pth``, ``.bin``; the released ``longclip-B.pt`` is one): read with torch's
  weights-only unpickler, which refuses any global that is not a tensor building block;
* TorchScript archives (OpenAI's ``ViT-B-16.pt``): their ``data.pkl`` names ``__torch__.*`` module classes, which
  weights-only loading refuses and ``torch.jit.load`` would compile and run. We read them with our own restricted
  unpickler that knows only tensors and turns every ``__torch__`` object into an inert record of its attributes;
  the TorchScript code in the archive is never looked at.

A small hostile file must not cost more than its size suggests: zip entries must be stored uncompressed (torch
never compresses what it writes) and pass their CRC check, every tensor must fit inside its own storage (no
zero-stride views that expand on the first copy), a legacy (pre-zip) ``torch.save`` file may not declare more
storage bytes than it holds, and a TorchScript archive yields at most the tensor bytes it declares, from a module
tree without cycles. The README's "Hostile checkpoints and configs" lists what is refused and why.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from ..errors import CheckpointError

__all__ = ["CheckpointError", "read_state_dict", "sample_keys"]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read all tensors of a checkpoint file as a flat ``{name: tensor}`` dict on the CPU.

    Accepts safetensors files, weights-only ``torch.save`` pickles (a state dict, possibly wrapped under
    ``"state_dict"`` or ``"model"``, possibly with DDP's ``module.`` prefix) and TorchScript archives.

    Raises:
        FileNotFoundError: The path does not exist.
        CheckpointError: The file is truncated, corrupt, holds something other than tensors, or would need to run
            code to load.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except PermissionError as e:  # is_file() would call this "no such file"
        raise PermissionError(f"{path}: permission denied") from e
    except OSError as e:
        raise FileNotFoundError(f"no checkpoint file at {path} ({e.strerror})") from e
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file")
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes)")

    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except PermissionError as e:
        raise PermissionError(f"{path}: permission denied (cannot read it)") from e
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        try:
            return load_safetensors(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"{path} ({size} bytes) is a safetensors file that is truncated or corrupt: {e}"
            ) from e
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if any(n.endswith("/constants.pkl") for n in names) or any("/code/" in n for n in names):
                    # Only data.pkl and data/* are read; the TorchScript code (deflated) is never looked at.
                    read = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl") or "/data/" in n]
                    check_archive(archive, path, read)
                    return _flatten_script_module(_read_torchscript(path, archive, names), path)
                check_archive(archive, path, names)
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{path} ({size} bytes) is a corrupt zip archive: {e}") from e
        except (zipfile.LargeZipFile, EOFError, NotImplementedError, OSError) as e:
            raise CheckpointError(f"{path} ({size} bytes) is a corrupt zip archive: {type(e).__name__}: {e}") from e
        return _unwrap(_checked_views(_load_weights_only(path, size), path), path)
    if head[:1] == b"\x80":  # pickle protocol marker: torch.save's legacy (non-zip) format
        check_legacy_sizes(path, size)
        return _unwrap(_checked_views(_load_weights_only(path, size), path), path)
    kind = "starts like a zip archive but has no readable central directory" if head[:2] == b"PK" else "is not"
    raise CheckpointError(
        f"{path} ({size} bytes) {kind} a torch checkpoint, a TorchScript archive or a safetensors file; "
        "is it truncated or corrupt?"
    )


def check_archive(archive: zipfile.ZipFile, path: Path, names: list[str]) -> None:
    """Refuse compressed entries and entries whose CRC does not match among ``names`` (the entries to be read).

    torch writes tensor data and pickles uncompressed (only a TorchScript archive's ``code/``, which we never read,
    is deflated), so a compressed entry among them means the file was repacked; refusing it keeps a small file from
    expanding into gigabytes. torch's own reader ignores CRCs; checking them costs one read of the file and catches
    flipped bits that would otherwise load as silently wrong weights.

    Raises:
        CheckpointError: An entry is compressed or fails its CRC check (named).
    """
    for name in names:
        info = archive.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path}: the zip entry {name} is compressed ({info.compress_size} bytes expanding to a declared "
                f"{info.file_size}); torch never compresses checkpoint data, so the file was repacked and is refused "
                "rather than expanded"
            )
        try:
            with archive.open(info) as entry:  # zipfile raises BadZipFile at the end of an entry with a wrong CRC
                while entry.read(1 << 22):
                    pass
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{path}: the zip entry {name} fails its CRC check; the file is corrupt") from e


_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)")


def _load_weights_only(path: Path, size: int) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's text advises weights_only=False, which would run the file's code: never pass it on.
        refused = _REFUSED_GLOBAL.search(str(e))
        if refused:
            raise CheckpointError(
                f"{path} was refused, so no code in it ran: it names the Python object {refused.group(1)}, which is "
                "not part of a tensor and would run code if loaded. Only weights are loaded from pickles."
            ) from None
        detail = _pickle_detail(e)
        raise CheckpointError(f"{path} ({size} bytes): its pickle (data.pkl) is corrupt: {detail}") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, IndexError, KeyError, MemoryError) as e:
        raise CheckpointError(
            f"{path} ({size} bytes) could not be read; the file is truncated or corrupt: {str(e).splitlines()[0]}"
        ) from e


# --- legacy (pre-zip) torch.save files ---------------------------------------------------------------------------


class _Inert:
    """Stands in for every object a legacy pickle names while its storages are counted: it runs nothing.

    The class and its instances accept whatever the pickle opcodes do with a class or an object (call, ``__new__``,
    ``__setstate__``, item and list updates) and keep nothing.
    """

    def __new__(cls, *args: object, **kwargs: object) -> _Inert:
        return object.__new__(_Inert)  # also when ``cls`` is itself an instance (NEWOBJ on a stand-in)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Inert:
        return _Inert()

    def __setstate__(self, state: object = None) -> None:  # BUILD on the class itself passes only the state
        pass

    def __setitem__(self, key: object, value: object) -> None:  # an OrderedDict's SETITEMS
        pass

    def append(self, value: object = None) -> None:
        pass

    def extend(self, values: object = None) -> None:
        pass

    def add(self, value: object = None) -> None:
        pass


class _StorageKind:
    def __init__(self, name: str, itemsize: int):
        self.name, self.itemsize = name, itemsize


class _CappedReader:
    """A file's ``read``/``readline`` that never ask for more than the bytes left in it (no allocation by a length)."""

    def __init__(self, file: io.BufferedReader, size: int):
        self._file, self._size = file, size

    def _left(self) -> int:
        return max(self._size - self._file.tell(), 0)

    def read(self, n: int = -1) -> bytes:
        return self._file.read(self._left() if n is None or n < 0 else min(n, self._left()))

    def readline(self, limit: int = -1) -> bytes:
        return self._file.readline(self._left() if limit is None or limit < 0 else min(limit, self._left()))


class _LegacyStorageCounter(pickle._Unpickler):  # the pure-Python unpickler: every read goes through _CappedReader
    """Unpickles a legacy file's main pickle with inert stand-ins, recording each root storage's declared bytes."""

    def __init__(self, file: _CappedReader, path: Path):
        super().__init__(file)
        self._path = path
        self.storages: dict[object, int] = {}

    def find_class(self, module: str, name: str) -> object:
        if isinstance(name, str) and "Storage" in name:  # as torch's legacy loader resolves storage types
            try:
                dtype = torch.serialization.StorageType(name).dtype
            except Exception:  # not a storage type torch knows: its own reader refuses it
                dtype = None
            if dtype is not None:
                return _StorageKind(name, dtype.itemsize)
        return _Inert

    def persistent_load(self, pid: object) -> object:
        kind = pid[0] if isinstance(pid, tuple) and pid else None
        if isinstance(kind, bytes):
            kind = kind.decode("ascii", "replace")
        if kind == "module":  # a pickled nn.Module class (a whole model saved): torch's own reader refuses it
            return _Inert
        if kind != "storage":
            return _Inert()
        if len(pid) != 6 or not isinstance(pid[1], _StorageKind) or type(pid[4]) is not int or pid[4] < 0:
            raise CheckpointError(f"{self._path}: a tensor storage record in the legacy torch.save file is corrupt")
        _, storage, key, _location, numel, _view = pid
        if not isinstance(key, (str, bytes, int)):
            raise CheckpointError(f"{self._path}: a tensor storage record in the legacy torch.save file is corrupt")
        self.storages.setdefault(key, numel * storage.itemsize)  # torch allocates a root storage when first named
        return _Inert()


def check_legacy_sizes(path: Path, size: int) -> None:
    """Refuse a legacy ``torch.save`` file whose storages declare more bytes than it holds, before torch reads it.

    The legacy format is five pickles (magic number, protocol version, system info, the object, the storage keys)
    followed by each storage's bytes, uncompressed, behind an 8-byte element count. torch allocates every storage at
    the size its record declares while unpickling the object, before it reads any data, so a few hundred bytes can
    ask for gigabytes. Here the pickles are read first with inert stand-ins (nothing named in them is looked up or
    called) and every root storage's declared bytes must fit into what follows them in the file.

    Raises:
        CheckpointError: The storages declare more bytes than the file holds, or the object pickle is corrupt.
    """
    with open(path, "rb") as f:
        reader = _CappedReader(f, size)
        try:  # magic number, protocol version, system info: torch refuses a wrong header itself, before allocating
            header = [_LegacyStorageCounter(reader, path).load() for _ in range(3)]
        except Exception:
            return
        if header[0] != torch.serialization.MAGIC_NUMBER:
            return
        counter = _LegacyStorageCounter(reader, path)
        try:
            counter.load()
            _LegacyStorageCounter(reader, path).load()  # the list of storage keys
        except CheckpointError:
            raise
        except Exception as e:
            detail = str(e).splitlines()[0] if str(e) else ""
            raise CheckpointError(
                f"{path} ({size} bytes): its pickle is corrupt (legacy torch.save format): "
                f"{type(e).__name__}: {detail}"
            ) from None
        held = size - f.tell()
    declared = sum(counter.storages.values()) + 8 * len(counter.storages)
    if declared > held:
        raise CheckpointError(
            f"{path} ({size} bytes): its tensor storages declare {declared} bytes but the file holds only {held} "
            "after its pickles; it is truncated, or forged to make the reader allocate memory it does not hold"
        )


def _pickle_detail(error: Exception) -> str:
    """The reason in torch's weights-only error, without its advice to load with ``weights_only=False``."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return lines[0] if lines else type(error).__name__


# Many names may view one storage (tied weights store one table under two names); more than this many times the
# bytes actually stored is a file forged to make a model far larger than itself (e.g. 100000 "layers" of one tensor).
MAX_SHARED_STORAGE_FACTOR = 8
_SHARED_STORAGE_SLACK = 64 * 2**20


def _checked_views(obj: object, path: Path) -> object:
    """Refuse tensors that reach past their storage or repeat it (a zero-stride view expands on the first copy), and
    files whose tensors, added up, are many times the storage they share."""
    tensors: list[torch.Tensor] = []
    _collect_tensors(obj, tensors)
    storages: dict[int, int] = {}
    for value in tensors:
        storage = value.untyped_storage()
        elements = storage.nbytes() // max(value.element_size(), 1)
        _check_view(value.shape, value.stride(), value.storage_offset(), elements, path)
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
    stored = sum(storages.values())
    logical = sum(value.numel() * value.element_size() for value in tensors)
    if logical > MAX_SHARED_STORAGE_FACTOR * stored + _SHARED_STORAGE_SLACK:
        raise CheckpointError(
            f"{path}: its {len(tensors)} tensors add up to {logical / 2**20:.0f} MiB but share {len(storages)} "
            f"storages of {stored / 2**20:.1f} MiB (more than {MAX_SHARED_STORAGE_FACTOR}x); the file is forged to "
            "expand in memory"
        )
    return obj


def _collect_tensors(obj: object, found: list[torch.Tensor]) -> None:
    for value in obj.values() if isinstance(obj, dict) else ():
        if isinstance(value, dict):
            _collect_tensors(value, found)
        elif isinstance(value, torch.Tensor):
            found.append(value)


def _check_view(size: tuple, stride: tuple, offset: int, storage_numel: int, path: Path) -> None:
    """A tensor view must lie inside its storage and not address more elements than the storage holds."""
    if not all(isinstance(n, int) and n >= 0 for n in (*size, *stride, offset)) or len(size) != len(stride):
        raise CheckpointError(f"{path}: a tensor has an invalid shape {size} / stride {stride}; the file is corrupt")
    numel = 1
    for n in size:
        numel *= n
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if numel else offset - 1
    if numel > storage_numel or last >= storage_numel:
        raise CheckpointError(
            f"{path}: a tensor of shape {tuple(size)} (stride {tuple(stride)}) addresses more than its storage of "
            f"{storage_numel} elements; the file is corrupt or forged to expand in memory"
        )


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside what ``torch.load`` returned and drop DDP's ``module.`` prefix."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds a dict without tensors; keys: {sample_keys(obj)}")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


# --- TorchScript archives ---------------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Inert stand-in for a pickled ``__torch__`` module: it only stores the attributes it is given."""

    def __init__(self, *args: object) -> None:
        self.attributes: dict[str, object] = {}

    def __setstate__(self, state: object) -> None:
        if isinstance(state, dict):
            self.attributes = state


class _RestrictedUnpickler(pickle.Unpickler):
    """Knows tensors, ordered dicts and inert ``__torch__`` records; refuses every other global.

    Each storage is read once, and the tensors built from them may not add up to more bytes than the archive's
    storages hold, so a small archive cannot make us allocate more than its own size.
    """

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(file)
        self._archive, self._prefix, self._path = archive, prefix, path
        self._storages: dict[str, torch.Tensor] = {}
        data = f"{prefix}data/"
        self._budget = sum(i.file_size for i in archive.infolist() if i.filename.startswith(data))

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise CheckpointError(
            f"{self._path}: refusing to load global {module}.{name} from a TorchScript archive; "
            "only tensors are read, so no code in it ran"
        )

    def _rebuild_tensor(self, storage: object, offset: object, size: object, stride: object, *_: object):
        if not isinstance(storage, torch.Tensor) or not isinstance(size, tuple) or not isinstance(stride, tuple):
            raise CheckpointError(f"{self._path}: a tensor record in the TorchScript archive is corrupt")
        _check_view(size, stride, offset, storage.numel(), self._path)
        nbytes = storage.element_size()
        for n in size:
            nbytes *= n
        self._budget -= nbytes
        if self._budget < 0:
            raise CheckpointError(
                f"{self._path}: the TorchScript archive's tensors add up to more bytes than its storages hold; "
                "it is corrupt or forged to expand in memory"
            )
        return torch.as_strided(storage, size, stride, offset).clone()

    def persistent_load(self, pid: tuple) -> torch.Tensor:
        if not isinstance(pid, tuple) or len(pid) != 5:
            raise CheckpointError(f"{self._path}: unexpected persistent record in a TorchScript archive")
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"{self._path}: unexpected persistent record {kind!r} in a TorchScript archive")
        name = f"{self._prefix}data/{key}"
        if name in self._storages:
            return self._storages[name]
        declared = self._archive.getinfo(name).file_size  # KeyError for a missing record: reported as corrupt
        if declared != numel * dtype.itemsize:
            raise CheckpointError(
                f"{self._path}: tensor storage {key} has {declared} bytes, expected {numel * dtype.itemsize}"
            )
        data = self._archive.read(name)
        storage = torch.frombuffer(bytearray(data), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        self._storages[name] = storage
        return storage


def _read_torchscript(path: Path, archive: zipfile.ZipFile, names: list[str]) -> object:
    data_pkl = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
    if data_pkl is None:
        raise CheckpointError(f"{path} looks like a TorchScript archive but has no data.pkl")
    prefix = data_pkl[: -len("data.pkl")]
    try:
        with archive.open(data_pkl) as f:
            return _RestrictedUnpickler(f, archive, prefix, path).load()
    except CheckpointError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        KeyError,
        zipfile.BadZipFile,
        ValueError,
        TypeError,
        IndexError,
        AttributeError,
        RecursionError,
        MemoryError,
        RuntimeError,
    ) as e:
        raise CheckpointError(f"{path}: corrupt TorchScript archive: {type(e).__name__}: {e}") from e


def _flatten_script_module(root: object, path: Path) -> dict[str, torch.Tensor]:
    """Turn the tree of ``__torch__`` records into ``{dotted.name: tensor}``, like ``Module.state_dict()``."""
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"{path}: the TorchScript archive does not hold a module")
    flat: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, _ScriptObject]] = [("", root)]
    seen: set[int] = {id(root)}  # a record met twice (a cycle, or shared) would make the walk endless or exponential
    while stack:
        prefix, node = stack.pop()
        for name, value in node.attributes.items():
            if isinstance(value, torch.Tensor):
                flat[prefix + str(name)] = value
            elif isinstance(value, _ScriptObject):
                if id(value) in seen:
                    raise CheckpointError(
                        f"{path}: the TorchScript archive's module {prefix}{name} refers back to a module already "
                        "read (a cycle); the archive is corrupt or forged"
                    )
                seen.add(id(value))
                stack.append((f"{prefix}{name}.", value))
    if not flat:
        raise CheckpointError(f"{path}: the TorchScript archive holds no tensors")
    return flat


def sample_keys(keys: object, n: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(map(str, keys[:n]))
    return f"{shown}, … ({len(keys)} in all)" if len(keys) > n else shown
