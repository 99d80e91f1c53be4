"""PyTorch state dict files (`torch.save(model.state_dict())`, `.pth`/`.pt`) read with the standard library and
NumPy, without torch and without running pickled code.

torch.save (since torch 1.6) writes a zip archive: `<archive>/data.pkl` pickles the dict, each tensor as a call
of `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, each storage as a persistent id
`("storage", torch.<Type>Storage, key, location, numel)` whose bytes are the record `<archive>/data/<key>`
(byte order: the `<archive>/byteorder` record, little if absent). The unpickler here resolves only the globals
such a pickle uses, to NumPy stand-ins, and refuses every other one (UnsafePickleError).
"""
import collections
import pickle
import sys
import zipfile

import numpy as np
from numpy.lib.stride_tricks import as_strided

# torch.<name> storage type -> NumPy dtype of its elements.
STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}
# What torch's legacy (pre-1.6, `_use_new_zipfile_serialization=False`) format starts with, after the pickle
# PROTO opcode: the pickled int torch.serialization.MAGIC_NUMBER (LONG1, 10 bytes).
LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

# A torch storage type, as the unpickler hands it to persistent_load (immutable: a pickle cannot alter it).
StorageType = collections.namedtuple("StorageType", ["name"])


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle in a state dict file refers to a global that reading a state dict does not need."""


def _numpy_dtype(name):
    """The NumPy dtype called `name`; bfloat16 comes from ml_dtypes (a TensorFlow dependency)."""
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class StateDictUnpickler(pickle.Unpickler):
    """Unpickles the `data.pkl` of a torch zip file into NumPy arrays, allowing only a state dict's globals."""

    def __init__(self, file, path, archive, prefix):
        super().__init__(file)
        self.path, self.archive, self.prefix = path, archive, prefix
        self.byteorder = self._byteorder()
        self.storages = {}
        self.allowed = {("collections", "OrderedDict"): collections.OrderedDict,
                        ("torch._utils", "_rebuild_tensor_v2"): self.rebuild_tensor,
                        **{("torch", name): StorageType(name) for name in STORAGE_DTYPES}}

    def _byteorder(self):
        try:
            byteorder = self.archive.read(self.prefix + "byteorder").decode("ascii", "replace")
        except KeyError:
            return "little"
        if byteorder not in ("little", "big"):
            raise ValueError(f"{self.path}: unknown byte order {byteorder!r} in its byteorder record")
        return byteorder

    def find_class(self, module, name):
        """The stand-in for global `module.name`, if a state dict needs it; UnsafePickleError otherwise."""
        try:
            return self.allowed[module, name]
        except KeyError:
            raise UnsafePickleError(
                f"{self.path}: refused global {module}.{name} in its pickle: a state dict file may only use "
                "collections.OrderedDict, torch._utils._rebuild_tensor_v2 and torch.<Type>Storage "
                f"({', '.join(STORAGE_DTYPES)})") from None

    def persistent_load(self, pid):
        """A storage `("storage", StorageType, key, location, numel)` as a 1-D array of its elements."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise ValueError(f"{self.path}: its pickle refers to {pid!r}, not to a storage")
        _, storage_type, key, _, numel = pid
        dtype = _numpy_dtype(STORAGE_DTYPES[storage_type.name])
        if key not in self.storages:
            self.storages[key] = self._read_storage(key, dtype)
        storage = self.storages[key]
        if storage.dtype != dtype or storage.size != numel:
            raise ValueError(f"{self.path}: storage {key!r} is used as {numel} {dtype} elements, but its record "
                             f"holds {storage.size} {storage.dtype} elements")
        return storage

    def _read_storage(self, key, dtype):
        record = f"{self.prefix}data/{key}"
        try:
            data = self.archive.read(record)
        except KeyError:
            raise ValueError(f"{self.path}: its pickle refers to storage {key!r}, but there is no record "
                             f"{record!r}") from None
        if len(data) % dtype.itemsize:
            raise ValueError(f"{self.path}: record {record!r} holds {len(data)} bytes, not a whole number of "
                             f"{dtype} elements")
        storage = np.frombuffer(data, dtype)
        return storage if self.byteorder == sys.byteorder else storage.byteswap()

    def rebuild_tensor(self, storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
        """torch._utils._rebuild_tensor_v2: the tensor viewing `storage` at the offset with size and stride,
        as a contiguous array of its own."""
        if not isinstance(storage, np.ndarray):
            raise ValueError(f"{self.path}: a tensor is rebuilt from {type(storage).__name__}, not a storage")
        if not (_is_index(storage_offset) and isinstance(size, tuple) and isinstance(stride, tuple)
                and len(size) == len(stride) and all(map(_is_index, size + stride))):
            raise ValueError(f"{self.path}: a tensor has an invalid layout: offset {storage_offset!r}, "
                             f"size {size!r}, stride {stride!r}")
        if metadata:
            raise ValueError(f"{self.path}: a tensor carries metadata {metadata!r}, which is not supported")
        if 0 in size:
            return np.zeros(size, storage.dtype)
        last = storage_offset + sum((n - 1) * step for n, step in zip(size, stride))
        if last >= storage.size:
            raise ValueError(f"{self.path}: a tensor (offset {storage_offset}, size {size}, stride {stride}) "
                             f"reaches past the end of its storage of {storage.size} elements")
        view = as_strided(storage[storage_offset:], size, [step * storage.itemsize for step in stride],
                          writeable=False)
        return view.copy()


def _is_index(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _open_archive(path):
    """The zip archive torch.save wrote at `path`, and its records' folder (`<archive>/`)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            head = f.read(2 + len(LEGACY_MAGIC))
        if head[:1] == b"\x80" and head[2:] == LEGACY_MAGIC:
            raise ValueError(
                f"{path} is in torch's legacy (pre-1.6, _use_new_zipfile_serialization=False) format, which is "
                "not supported; re-save it in the zip format on a machine with torch: "
                "torch.save(torch.load(path), new_path)") from None
        raise ValueError(f"{path} is not a PyTorch state dict file (or a truncated one): it is neither the zip "
                         "archive torch.save writes nor torch's legacy format") from None
    pickles = [name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")]
    if len(pickles) != 1:
        archive.close()
        raise ValueError(f"{path} is a zip archive but not a torch.save file: it has {len(pickles)} "
                         "<archive>/data.pkl records, not one")
    return archive, pickles[0][:-len("data.pkl")]


def load_state_dict(path):
    """The state dict torch.save wrote to `path` as {key: NumPy array}, in the file's key order."""
    archive, prefix = _open_archive(path)
    try:
        with archive, archive.open(prefix + "data.pkl") as f:
            state = StateDictUnpickler(f, path, archive, prefix).load()
    except UnsafePickleError:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f"{path} is damaged: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict (a mapping of names to "
                         "tensors, as torch.save(model.state_dict()) writes)")
    for key, value in state.items():
        if not (isinstance(key, str) and isinstance(value, np.ndarray)):
            raise ValueError(f"{path} is not a state dict (a mapping of names to tensors, as "
                             f"torch.save(model.state_dict()) writes): its entry {key!r} is a "
                             f"{type(value).__name__}")
    return dict(state)
