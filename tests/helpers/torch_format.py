"""torch.save's zip format written with the standard library and NumPy, so tests can make real `.pth` files
(e.g. a full-size torchvision state dict) without torch.

`write_pth(path, state)` writes what torch 2.14's `torch.save(collections.OrderedDict(state), path)` writes for
contiguous CPU tensors, byte for byte but for the `.data/serialization_id` record (random in torch, a content
hash here); tests/fixtures/pth/make_fixtures.py checks that against torch.
"""
import hashlib
import pathlib
import struct
import zlib

import numpy as np

# NumPy dtype name -> torch storage type of its tensors.
STORAGE_TYPES = {
    "float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage",
    "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage", "int8": "CharStorage",
    "uint8": "ByteStorage", "bool": "BoolStorage",
}
ALIGNMENT = 64  # torch's kFieldAlignment: every record's bytes start at a multiple of it
ZIP32_LIMIT = 0xFFFFFFFF  # torch writes zip64 extra fields from here on, which write_pth does not


class _Pickle:
    """The protocol-2 pickle opcodes (memo included) Python's Pickler writes in torch.save for a state dict."""

    def __init__(self):
        self.data = bytearray(b"\x80\x02")  # PROTO 2
        self.memo = {}  # objects shared by the tensors (globals, torch's constant strings) -> memo index
        self.size = 0

    def put(self):
        """Memoizes the object just written (BINPUT / LONG_BINPUT), as the Pickler does every object."""
        self.data += b"q" + bytes([self.size]) if self.size < 256 else b"r" + struct.pack("<I", self.size)
        self.size += 1
        return self.size - 1

    def shared(self, obj, opcodes):
        """Writes `opcodes` (for `obj`) and memoizes them the first time; a memo reference (BINGET / LONG_BINGET)
        after, as the Pickler does for an object it meets again."""
        if obj in self.memo:
            index = self.memo[obj]
            self.data += b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)
        else:
            self.data += opcodes
            self.memo[obj] = self.put()

    def global_(self, module, name):
        self.shared((module, name), f"c{module}\n{name}\n".encode())

    def string(self, text, shared=False):
        """A str: memoized and referenced again if `shared` (torch's constants), written anew otherwise."""
        encoded = text.encode("utf-8", "surrogatepass")
        opcodes = b"X" + struct.pack("<I", len(encoded)) + encoded
        if shared:
            self.shared(text, opcodes)
        else:
            self.data += opcodes
            self.put()

    def int(self, value):
        if value <= 0xFF:
            self.data += b"K" + bytes([value])
        elif value <= 0xFFFF:
            self.data += b"M" + struct.pack("<H", value)
        elif value <= 0x7FFFFFFF:
            self.data += b"J" + struct.pack("<i", value)
        else:
            encoded = value.to_bytes((value.bit_length() >> 3) + 1, "little", signed=True)
            self.data += b"\x8a" + bytes([len(encoded)]) + encoded

    def tuple(self, items):
        """A tuple of non-negative ints (EMPTY_TUPLE, TUPLE1-3 or MARK ... TUPLE)."""
        if not items:
            self.data += b")"
            return
        if len(items) > 3:
            self.data += b"("
        for item in items:
            self.int(item)
        self.data += b"t" if len(items) > 3 else b"\x85\x86\x87"[len(items) - 1:len(items)]
        self.put()

    def empty_ordered_dict(self):
        self.global_("collections", "OrderedDict")
        self.data += b")R"  # EMPTY_TUPLE REDUCE
        self.put()

    def tensor(self, storage_key, storage_type, shape):
        """_rebuild_tensor_v2(storage, 0, shape, contiguous stride, False, OrderedDict()) for a whole storage."""
        numel = int(np.prod(shape))
        stride = tuple(int(np.prod([max(n, 1) for n in shape[i + 1:]])) for i in range(len(shape)))
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.data += b"(("  # MARK (arguments) MARK (persistent id)
        self.string("storage", shared=True)
        self.global_("torch", storage_type)
        self.string(storage_key)
        self.string("cpu", shared=True)
        self.int(numel)
        self.data += b"t"  # TUPLE
        self.put()
        self.data += b"Q"  # BINPERSID
        self.int(0)
        self.tuple(shape)
        self.tuple(stride)
        self.data += b"\x89"  # NEWFALSE (requires_grad)
        self.empty_ordered_dict()  # backward_hooks
        self.data += b"t"  # TUPLE (arguments)
        self.put()
        self.data += b"R"  # REDUCE
        self.put()


def _state_pickle(state):
    """data.pkl of the OrderedDict `state`, whose tensors use storages "0", "1", ... in order."""
    pickle = _Pickle()
    pickle.empty_ordered_dict()
    items = list(state.items())
    for start in range(0, len(items), 1000):  # the Pickler's SETITEMS batches
        batch = items[start:start + 1000]
        if len(batch) > 1:
            pickle.data += b"("  # MARK
        for index, (key, array) in enumerate(batch, start):
            pickle.string(key)
            pickle.tensor(str(index), STORAGE_TYPES[array.dtype.name], array.shape)
        pickle.data += b"u" if len(batch) > 1 else b"s"  # SETITEMS / SETITEM
    pickle.data += b"."  # STOP
    return bytes(pickle.data)


class _ZipWriter:
    """The zip layout torch's PyTorchStreamWriter (miniz) writes: stored records, data aligned by a padding
    extra field ("FB"), data descriptors, a zip64 end of central directory."""

    def __init__(self, file, archive):
        self.file, self.archive = file, archive
        self.offset = 0
        self.central = []

    def write(self, data):
        self.file.write(data)
        self.offset += len(data)

    def record(self, name, data):
        name = f"{self.archive}/{name}".encode()
        size = len(data)
        if self.offset >= ZIP32_LIMIT or size >= ZIP32_LIMIT:
            raise ValueError(f"write_pth writes files under 4 GiB only; {name.decode()!r} does not fit")
        padding = -(self.offset + 30 + len(name) + 4) % ALIGNMENT
        extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
        flags = 0x0808 if size else 0x0800  # UTF-8 names; sizes and CRC in a data descriptor
        crc = zlib.crc32(data)
        self.central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0, 0, flags, 0, 0, 0, crc, size, size,
                                        len(name), 0, 0, 0, 0, 0, self.offset) + name)
        self.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 0, flags, 0, 0, 0, 0, 0, 0, len(name), len(extra)))
        self.write(name + extra)
        self.write(data)
        if size:
            self.write(struct.pack("<IIII", 0x08074B50, crc, size, size))

    def close(self):
        start = self.offset
        for entry in self.central:
            self.write(entry)
        count, size, end = len(self.central), self.offset - start, self.offset
        self.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 45, 0, 0, count, count, size, start))
        self.write(struct.pack("<IIQI", 0x07064B50, 0, end, 1))
        self.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, size, start, 0))


def write_pth(path, state):
    """Writes `state` ({key: array}; float16/32/64, bfloat16, int8-64, uint8 or bool) as torch.save does."""
    state = {key: np.asarray(value) for key, value in state.items()}
    for key, array in state.items():
        if array.dtype.name not in STORAGE_TYPES:
            raise ValueError(f"write_pth: {key!r} has dtype {array.dtype}, which has no torch storage type here")
    pickle = _state_pickle(state)
    path = pathlib.Path(path)
    with open(path, "wb") as f:
        writer = _ZipWriter(f, path.stem or "archive")
        writer.record("data.pkl", pickle)
        writer.record(".format_version", b"1")
        writer.record(".storage_alignment", str(ALIGNMENT).encode())
        writer.record("byteorder", b"little")
        digest = hashlib.sha256(pickle)
        for index, array in enumerate(state.values()):
            data = np.asarray(array, array.dtype.newbyteorder("<")).tobytes()
            digest.update(data)
            writer.record(f"data/{index}", data)
        writer.record("version", b"3\n")
        serialization_id = "".join(f"{int.from_bytes(digest.digest()[i:i + 8], 'little'):020d}" for i in (0, 8))
        writer.record(".data/serialization_id", serialization_id.encode())
        writer.close()
