"""keras_deeplab.pth: state dicts in torch.save's format read without torch, never running pickled code."""
import builtins
import collections
import os
import pathlib
import pickle
import re
import shlex
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from helpers.torch_format import write_pth
from keras_deeplab import convert
from keras_deeplab.pth import UnsafePickleError, load_state_dict

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "pth"


def replace_records(path, records):
    """Rewrites the zip at `path` with the records {name relative to the archive folder: bytes, or None to drop}
    replaced."""
    with zipfile.ZipFile(path) as archive:
        folder = archive.namelist()[0].split("/")[0]
        contents = {name: archive.read(name) for name in archive.namelist()}
    for name, data in records.items():
        contents.pop(f"{folder}/{name}", None)
        if data is not None:
            contents[f"{folder}/{name}"] = data
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def data_pkl(path):
    with zipfile.ZipFile(path) as archive:
        return archive.read(f"{path.stem}/data.pkl")


@pytest.mark.parametrize("name", ["mixed", "conv_norm_act"])
def test_reads_what_torch_load_returns(name):
    """Bit for bit, with dtypes, shapes and key order, what torch 2.14's torch.load(weights_only=True) returns for
    files torch.save wrote (see fixtures/pth/README.md)."""
    state = load_state_dict(FIXTURES / f"{name}.pth")
    with np.load(FIXTURES / f"{name}_expected.npz") as expected:
        assert list(state) == list(expected["keys"])
        for key, torch_dtype in zip(expected["keys"], expected["dtypes"]):
            array, value = state[key], expected[f"value:{key}"]
            assert array.shape == value.shape and array.flags.c_contiguous and array.flags.writeable, key
            if torch_dtype == "torch.bfloat16":
                assert array.dtype == ml_dtypes.bfloat16
                np.testing.assert_array_equal(array.view(np.uint16), expected[f"bits:{key}"])
                np.testing.assert_array_equal(array.astype(np.float32), value)
            else:
                assert array.dtype == value.dtype and array.tobytes() == value.tobytes(), key


def test_views_scalars_and_empty_tensors_of_the_mixed_fixture():
    state = load_state_dict(FIXTURES / "mixed.pth")
    assert state["bn.num_batches_tracked"].shape == () and state["bn.num_batches_tracked"] == 123456789012
    assert state["transposed"].shape == (4, 3) and state["empty"].shape == (0, 3)
    assert {state[key].dtype for key in state} >= {np.dtype(t) for t in ("float16", "float64", "int8", "bool")}
    state["shared.a"][...] = 0  # views of one torch storage come out as arrays of their own
    assert np.all(state["shared.b"] != 0)


def round_trip_state():
    rng = np.random.default_rng(0)
    return {
        "float32": rng.standard_normal((3, 4, 2, 2)).astype(np.float32),
        "float64": rng.standard_normal(5),
        "float16": rng.standard_normal((2, 3)).astype(np.float16),
        "bfloat16": rng.standard_normal(6).astype(ml_dtypes.bfloat16),
        "num_batches_tracked": np.array(7, np.int64),
        "int32": np.arange(-3, 3, dtype=np.int32),
        "int16": np.array([-32768, 32767], np.int16),
        "int8": np.array([-128, 127], np.int8),
        "uint8": np.arange(250, 256, dtype=np.uint8),
        "bool": np.array([[True], [False]]),
        "transposed": rng.standard_normal((4, 3)).astype(np.float32).T,
        "big_endian": np.arange(4, dtype=">f4"),
        "empty": np.zeros((2, 0, 3), np.float32),
    }


def test_write_pth_round_trip(tmp_path):
    state = round_trip_state()
    write_pth(tmp_path / "state.pth", state)
    loaded = load_state_dict(tmp_path / "state.pth")
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype.newbyteorder("=") and loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value)


def test_big_endian_file_and_file_without_byteorder_record(tmp_path):
    """The `byteorder` record says how the storages' bytes are ordered; without it they are little-endian."""
    state = {"weight": np.arange(6, dtype=np.float32).reshape(2, 3), "count": np.array(3, np.int64)}
    path = tmp_path / "state.pth"
    write_pth(path, state)
    replace_records(path, {"byteorder": b"big", "data/0": state["weight"].astype(">f4").tobytes(),
                           "data/1": state["count"].astype(">i8").tobytes()})
    for key, array in load_state_dict(path).items():
        assert array.dtype == state[key].dtype
        np.testing.assert_array_equal(array, state[key])
    write_pth(path, state)
    replace_records(path, {"byteorder": None})
    np.testing.assert_array_equal(load_state_dict(path)["weight"], state["weight"])


class Payload:
    """Pickles as a call of `function(*args)`, as a malicious file would."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


# (function, its arguments to create the file `marker`, pickle protocol, the global the pickle names: protocol 2
# writes Python 2's module names)
PAYLOADS = [
    (os.system, lambda marker: [f"touch {shlex.quote(str(marker))}"], 2, "posix.system"),
    (builtins.exec, lambda marker: [f"open({str(marker)!r}, 'w').close()"], 2, "__builtin__.exec"),
    (builtins.exec, lambda marker: [f"open({str(marker)!r}, 'w').close()"], 4, "builtins.exec"),
    (subprocess.check_call, lambda marker: [["touch", str(marker)]], 2, "commands.check_call"),
    (subprocess.check_call, lambda marker: [["touch", str(marker)]], 4, "subprocess.check_call"),
]


@pytest.mark.parametrize("function, arguments, protocol, refused", PAYLOADS)
@pytest.mark.parametrize("where", ["top", "value"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, function, arguments, protocol, refused, where):
    marker = tmp_path / "marker"
    payload = Payload(function, *arguments(marker))
    malicious = pickle.dumps(payload if where == "top" else collections.OrderedDict(weight=payload), protocol)
    path = tmp_path / "evil.pth"
    write_pth(path, {"weight": np.ones(2, np.float32)})
    replace_records(path, {"data.pkl": malicious})
    with pytest.raises(UnsafePickleError, match=rf"evil\.pth: refused global {re.escape(refused)} ") as error:
        load_state_dict(path)
    assert isinstance(error.value, pickle.UnpicklingError)
    assert not marker.exists()
    pickle.loads(malicious)  # what loading it with plain pickle would have done
    assert marker.exists()


def test_tensor_reaching_past_its_storage_is_an_error(tmp_path):
    path = tmp_path / "state.pth"
    write_pth(path, {"weight": np.zeros(5, np.float32)})
    pickled = data_pkl(path)
    assert pickled.count(b"K\x05\x85") == 1  # the size tuple (5,): BININT1 5, TUPLE1
    replace_records(path, {"data.pkl": pickled.replace(b"K\x05\x85", b"K\x06\x85")})
    with pytest.raises(ValueError, match=r"state\.pth: a tensor .* reaches past the end of its storage of 5"):
        load_state_dict(path)


def test_missing_storage_record_is_an_error(tmp_path):
    path = tmp_path / "state.pth"
    write_pth(path, {"weight": np.zeros(5, np.float32)})
    replace_records(path, {"data/0": None})
    with pytest.raises(ValueError, match=r"state\.pth: .* no record 'state/data/0'"):
        load_state_dict(path)


def test_damaged_file_is_a_clear_error(tmp_path):
    path = tmp_path / "state.pth"
    write_pth(path, {"weight": np.full(16, 1.0, np.float32)})
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"state\.pth is not a PyTorch state dict file \(or a truncated one\)"):
        load_state_dict(path)
    stored = np.full(16, 1.0, np.float32).tobytes()
    path.write_bytes(data.replace(stored, stored[:-1] + b"\x40"))
    with pytest.raises(ValueError, match=r"state\.pth is damaged: Bad CRC-32 for file 'state/data/0'"):
        load_state_dict(path)


def test_legacy_format_is_a_clear_error():
    with pytest.raises(ValueError, match=r"legacy\.pth is in torch's legacy .* not supported") as error:
        load_state_dict(FIXTURES / "legacy.pth")
    assert "torch.save(torch.load(path), new_path)" in str(error.value)


@pytest.mark.parametrize("contents", [b"", b"not a state dict", pickle.dumps({"weight": [1.0]}, protocol=2)])
def test_not_a_torch_file_is_a_clear_error(tmp_path, contents):
    path = tmp_path / "weights.pth"
    path.write_bytes(contents)
    with pytest.raises(ValueError, match=r"weights\.pth is not a PyTorch state dict file"):
        load_state_dict(path)


def test_zip_without_data_pkl_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.pth"
    np.savez(path.with_suffix(".npz"), weight=np.ones(2))
    path.with_suffix(".npz").rename(path)
    with pytest.raises(ValueError, match=r"weights\.pth is a zip archive but not a torch\.save file"):
        load_state_dict(path)


@pytest.mark.parametrize("obj, found", [
    ([1, 2], "holds a list, not a state dict"),
    ({"state_dict": {}}, "its entry 'state_dict' is a dict"),
])
def test_pickle_that_is_not_a_state_dict_is_a_clear_error(tmp_path, obj, found):
    path = tmp_path / "weights.pth"
    write_pth(path, {})
    replace_records(path, {"data.pkl": pickle.dumps(obj, protocol=2)})
    with pytest.raises(ValueError, match=rf"weights\.pth .*{found}"):
        load_state_dict(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_state_dict(tmp_path / "nothere.pth")


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_converter_reads_pth_without_torch(tmp_path, monkeypatch, suffix):
    state = round_trip_state()
    path = tmp_path / f"x{suffix}"
    write_pth(path, state)
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    loaded = convert.load_state_dict(path)
    assert list(loaded) == list(state)
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value)
