"""TensorFlow Serving's REST JSON <-> numpy tensors (the rules of tensorflow_serving/util/json_tensor.cc).

Requests: an object with exactly one of `instances` (row format: a non-empty list, one entry per batch item)
or `inputs` (columnar: a value, or an object keyed by input name), and an optional `signature_name`.
`{"b64": "..."}` stands for bytes (standard base64 alphabet) and is allowed only for DT_STRING inputs.
Responses: `{"predictions": [...]}` for row requests, `{"outputs": ...}` for columnar ones; DT_STRING outputs
whose name ends in `_bytes` are written as `{"b64": "..."}`; floats print with 6 (float32) or 15 (float64)
significant digits unless more are needed to round-trip; NaN and Infinity are bare tokens.

Types follow the signature strictly, as TF Serving: a JSON `true`/`false` is only a DT_BOOL value and numbers are
never bools, so a list mixing them is rejected for every dtype. Running out of memory while parsing, converting or
encoding is answered with 429 (RESOURCE_EXHAUSTED), as the contract says. Encoded images in DT_STRING inputs are
measured from their headers (`check_image_pixels`, with Pillow) so that a server rejects a tiny file declaring a
huge picture (a decompression bomb) before any decoder allocates it.

This module needs only numpy, Pillow and the standard library, so clients and tests can use it without TensorFlow.
"""
import base64
import binascii
import functools
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from keras_deeplab.serving.contract import SERVING_SIGNATURE
from keras_deeplab.serving.images import image_dimensions

# The dtypes TF Serving's JSON codec reads and writes; any other one is answered with 501.
NUMPY_DTYPES = {
    "DT_FLOAT": np.dtype(np.float32),
    "DT_DOUBLE": np.dtype(np.float64),
    "DT_INT8": np.dtype(np.int8),
    "DT_INT16": np.dtype(np.int16),
    "DT_INT32": np.dtype(np.int32),
    "DT_INT64": np.dtype(np.int64),
    "DT_UINT8": np.dtype(np.uint8),
    "DT_UINT16": np.dtype(np.uint16),
    "DT_UINT32": np.dtype(np.uint32),
    "DT_UINT64": np.dtype(np.uint64),
    "DT_BOOL": np.dtype(np.bool_),
    "DT_STRING": np.dtype(object),
}
JSON_DTYPES = frozenset(NUMPY_DTYPES)

# (significant digits tried first, digits that always round-trip) per float width, as TF's FloatToBuffer.
_FLOAT_DIGITS = {np.dtype(np.float32): (6, 9), np.dtype(np.float64): (15, 17)}

# A server's default bound on the pixels of one encoded image in a request (`--max_image_pixels`).
DEFAULT_MAX_IMAGE_PIXELS = 64 * 1024 * 1024


# HTTP status -> the canonical error code a request refused with it counts as (metrics, gRPC status) when the
# error does not name its code; the reverse of tensorflow_serving's ToHTTPStatusCode for the codes used here.
STATUS_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ABORTED", 413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


class ServingError(Exception):
    """A request that cannot be served: `status` is the HTTP status code, `message` the `{"error": ...}` text,
    `code` the canonical error code name ("INVALID_ARGUMENT", ...; by default the one `status` stands for)."""

    def __init__(self, message, status=400, code=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or STATUS_CODES.get(status, "UNKNOWN")


def out_of_memory_is_429(what):
    """Decorator: a MemoryError inside the function becomes ServingError 429 (TF Serving's RESOURCE_EXHAUSTED)."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except MemoryError:
                raise ServingError(f"Resource exhausted: out of memory while {what}", 429) from None
        return wrapper
    return decorate


@dataclass
class PredictRequest:
    """A parsed predict body: which signature, which format, and the raw JSON of its data."""

    signature_name: str
    row_format: bool
    data: Any


@out_of_memory_is_429("parsing the request")
def parse_predict_body(body):
    """Parses a predict request body (bytes or str) into a PredictRequest, or raises ServingError (400).

    The checks and messages are those of TF Serving's FillPredictRequestFromJson (util/json_tensor.cc).
    """
    document = parse_json(body)
    if not isinstance(document, dict):
        raise ServingError(_format_error(document, "Is not object"))
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise ServingError(_format_error(document,
                                         "not formatted correctly. 'signature_name' key must be a string value."))
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise ServingError(_format_error(
            document, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "))
    if not (has_instances or has_inputs):
        raise ServingError("Missing 'inputs' or 'instances' key")
    if has_instances and not isinstance(document["instances"], list):
        raise ServingError(_format_error(document, "Excepting 'instances' to be an list/array"))
    if has_instances and not document["instances"]:
        raise ServingError(_format_error(document, "No values in 'instances' array"))
    # An empty signature_name is the default one, as in TF Serving's GetInfoMap.
    return PredictRequest(signature_name or SERVING_SIGNATURE, has_instances,
                          document["instances" if has_instances else "inputs"])


def _format_error(document, text):
    """TF Serving's FormatError: the document as RapidJSON's PrettyWriter prints it (4-space indent), then `text`."""
    return f"JSON Value: {json.dumps(document, indent=4, ensure_ascii=False)} {text}"


def parse_json(body):
    """The JSON document in `body` (bytes or str), read as TF Serving's RapidJSON 1.1.0 reads it, or ServingError.

    Rejections get TF Serving's message, `JSON Parse error: <GetParseError_En text> at offset: <byte offset>`
    (`JSON Parse error: The document is empty` for a body of zero bytes). Python's json module parses; its error
    (kind and position) is mapped to the RapidJSON error code and to the byte offset where RapidJSON stops. As in
    RapidJSON (MemoryStream, no kParseValidateEncodingFlag): leading UTF-8 BOM bytes are skipped but counted in
    offsets, a NUL byte ends the document, and bytes that are not UTF-8 are kept as they are inside strings (they
    come back from `string_bytes`) and are an invalid value outside them.

    Not exact: RapidJSON also accepts `Inf`, `-NaN` and `-Inf` (refused here as an invalid value); it refuses
    numbers beyond a double (`Number too big to be stored in double.`) where Python reads 1e400 as infinity and
    keeps integers exact (only integers of more than 4300 digits are refused here, at the number's start, as
    RapidJSON does); a JSON escape of a lone low surrogate (`\\udc80`) is kept as the byte it stands for in
    Python's surrogateescape scheme, not as RapidJSON's 3 bytes, when it is in 0xDC80-0xDCFF; nesting deeper than
    Python's recursion limit is refused (`nested too deeply`) where RapidJSON has no limit; of duplicate keys,
    Python keeps the last one and RapidJSON's FindMember the first.
    """
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if not body:
        raise ServingError("JSON Parse error: The document is empty")
    start = 0
    for bom_byte in b"\xef\xbb\xbf":  # EncodedInputStream<UTF8<>, MemoryStream> skips each BOM byte if present
        start += body[start:start + 1] == bytes([bom_byte])
    stop = body.find(b"\0", start)
    text = str(memoryview(body)[start:stop if stop >= 0 else len(body)], "utf-8", "surrogateescape")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        problem, index = _rapidjson_error(text, error.msg, error.pos)
    except RecursionError:
        raise ServingError("JSON Parse error: nested too deeply") from None
    except ValueError:  # an integer of more than sys.get_int_max_str_digits() digits
        problem, index = _NUMBER_TOO_BIG, _LONG_INTEGER.search(text).start()
    else:
        lone = _lone_high_surrogate(text)
        if lone is None:
            return document
        problem, index = _SURROGATE_INVALID, lone
    offset = start + len(text[:index].encode("utf-8", "surrogateescape"))
    raise ServingError(f"JSON Parse error: {problem} at offset: {offset}")


# RapidJSON 1.1.0's GetParseError_En texts (include/rapidjson/error/en.h), the version TF Serving builds with.
_DOCUMENT_EMPTY = "The document is empty."
_ROOT_NOT_SINGULAR = "The document root must not be followed by other values."
_VALUE_INVALID = "Invalid value."
_OBJECT_MISS_NAME = "Missing a name for object member."
_OBJECT_MISS_COLON = "Missing a colon after a name of object member."
_OBJECT_MISS_COMMA = "Missing a comma or '}' after an object member."
_ARRAY_MISS_COMMA = "Missing a comma or ']' after an array element."
_INVALID_HEX = "Incorrect hex digit after \\u escape in string."
_SURROGATE_INVALID = "The surrogate pair in string is invalid."
_ESCAPE_INVALID = "Invalid escape character in string."
_MISS_QUOTATION_MARK = "Missing a closing quotation mark in string."
_NUMBER_TOO_BIG = "Number too big to be stored in double."
_MISS_FRACTION = "Miss fraction part in number."
_MISS_EXPONENT = "Miss exponent in number."

_HIGH_SURROGATE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}")
_LOW_SURROGATE_HEX = re.compile(r"[dD][c-fC-F][0-9a-fA-F]{2}")
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_LONE_HIGH_SURROGATE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})")
_LONG_INTEGER = re.compile(r"-?[0-9]{4301}")
_BRACKET_OR_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_JSON_WHITESPACE = " \t\n\r"


def _rapidjson_error(text, message, pos):
    """(GetParseError_En text, character index) of RapidJSON's error for Python's json error `message` at `pos`."""
    if message == "Expecting value":
        if pos == len(text) and not text.strip(_JSON_WHITESPACE):
            return _DOCUMENT_EMPTY, pos
        return _VALUE_INVALID, _invalid_value_end(text, pos)
    if message.startswith("Expecting property name"):
        return _OBJECT_MISS_NAME, pos
    if message == "Expecting ':' delimiter":
        return _OBJECT_MISS_COLON, pos
    if message in ("Expecting ',' delimiter", "Extra data"):
        number_error = _number_error(text, pos)
        if number_error:
            return number_error
        if message == "Extra data":
            return _ROOT_NOT_SINGULAR, pos
        return (_OBJECT_MISS_COMMA if _innermost_bracket(text, pos) == "{" else _ARRAY_MISS_COMMA), pos
    if message.startswith("Unterminated string"):
        if _escaped(text, len(text)):  # a backslash escaping the end of the document
            return _ESCAPE_INVALID, len(text) - 1
        return _MISS_QUOTATION_MARK, len(text)
    if message.startswith(("Invalid control character", "Invalid \\escape")):
        return _ESCAPE_INVALID, pos
    if message.startswith("Invalid \\uXXXX escape"):
        return _unicode_escape_error(text, pos)
    return message, pos


def _invalid_value_end(text, pos):
    """Where RapidJSON stops reading the invalid value at `pos`: it consumes as much of a literal as matches."""
    first = text[pos:pos + 1]
    if first in ("n", "t", "f"):
        return _literal_end(text, pos, {"n": "null", "t": "true", "f": "false"}[first])
    if first == "-":
        pos += 1
    end = _literal_end(text, pos, "NaN")  # kParseNanAndInfFlag: NaN, Inf, Infinity
    if end - pos < 3:
        inf_end = _literal_end(text, end, "Inf")
        if inf_end - end == 3 and text[inf_end:inf_end + 1] == "i":
            inf_end = _literal_end(text, inf_end, "inity")
        end = inf_end
    return end


def _literal_end(text, pos, literal):
    """The index after the longest prefix of `literal` found at `pos` (RapidJSON's successive Consume calls)."""
    length = 0
    while length < len(literal) and text[pos + length:pos + length + 1] == literal[length]:
        length += 1
    return pos + length


def _number_error(text, pos):
    """RapidJSON's error for a number Python read only in part: `1.` or `1e` not followed by a digit, else None."""
    start = pos
    while start > 0 and text[start - 1] in "0123456789.eE+-":
        start -= 1
    number = text[start:pos]
    if not number or number[-1] not in "0123456789":
        return None
    if text[pos:pos + 1] == "." and not set(number) & set(".eE"):
        return _MISS_FRACTION, pos + 1
    if text[pos:pos + 1] in ("e", "E") and not set(number) & set("eE"):
        return _MISS_EXPONENT, pos + 1 + (text[pos + 1:pos + 2] in ("+", "-"))
    return None


def _innermost_bracket(text, pos):
    """The innermost '[' or '{' still open at `pos` (strings skipped)."""
    stack = []
    for match in _BRACKET_OR_STRING.finditer(text, 0, pos):
        token = match.group()
        if token in ("[", "{"):
            stack.append(token)
        elif token in ("]", "}"):
            stack.pop()
    return stack[-1] if stack else None


def _escaped(text, index):
    """Whether the character at `index` follows an odd run of backslashes (it is escaped)."""
    run = 0
    while index - run > 0 and text[index - run - 1] == "\\":
        run += 1
    return run % 2 == 1


def _unicode_escape_error(text, pos):
    """RapidJSON's error for the \\u escape whose 'u' is at `pos`, which Python's json refused."""
    backslash = first = pos - 1
    if first >= 6 and _HIGH_SURROGATE.fullmatch(text, first - 6, first) and not _escaped(text, first - 6):
        first -= 6  # the second half of a surrogate pair: RapidJSON reports the pair's first backslash
    digits = text[pos + 1:pos + 5]
    if not _HEX4.fullmatch(digits):
        return _INVALID_HEX, first
    # A complete escape that ends the document (Python needs a character after it).
    pair_ok = first != backslash and _LOW_SURROGATE_HEX.fullmatch(digits)
    lone_high = first == backslash and _HIGH_SURROGATE.fullmatch(text, backslash, pos + 5)
    if (first != backslash and not pair_ok) or lone_high:
        return _SURROGATE_INVALID, first
    return _MISS_QUOTATION_MARK, len(text)


def _lone_high_surrogate(text):
    """Index of the first \\uD800-\\uDBFF escape not followed by a low-surrogate escape (RapidJSON refuses it;
    Python's json keeps a lone surrogate), else None."""
    for match in _LONE_HIGH_SURROGATE.finditer(text):
        if not _escaped(text, match.start()):
            return match.start()
    return None


def string_bytes(text):
    """The bytes of a parsed JSON string as RapidJSON keeps them: undecodable body bytes as they came (Python's
    surrogateescape), escapes as UTF-8."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # an escaped lone surrogate outside 0xDC80-0xDCFF: RapidJSON writes its 3 bytes
        return text.encode("utf-8", "surrogatepass")


@out_of_memory_is_429("converting the request to tensors")
def request_tensors(request, input_dtypes):
    """The input arrays of `request` for a signature whose inputs are `input_dtypes` ({name: "DT_..."}).

    Raises ServingError (400) on a wrong structure, name, type or shape, and (501) on an input dtype that JSON
    cannot carry.
    """
    for name, dtype in input_dtypes.items():
        if dtype not in NUMPY_DTYPES:
            raise ServingError(f"Input tensor {name!r} has type {dtype}, which the JSON API does not support", 501)
    names = sorted(input_dtypes)
    if request.row_format:
        return _row_tensors(request.data, names, input_dtypes)
    return _columnar_tensors(request.data, names, input_dtypes)


def _row_tensors(instances, names, input_dtypes):
    if not _is_named_object(instances[0]):
        if len(names) != 1:
            raise ServingError("instances is a plain list, but expecting list of objects as multiple input tensors "
                               f"required as per tensorinfo_map (inputs: {', '.join(names)})")
        return {names[0]: to_array(instances, input_dtypes[names[0]], "'instances'")}
    for index, instance in enumerate(instances):
        if not _is_named_object(instance):
            raise ServingError(f"Failed to process element: {index} of 'instances' list. Error: expecting an object "
                               f"keyed by input name like element 0, got {_json_type(instance)}")
        missing = [name for name in names if name not in instance]
        unexpected = sorted(set(instance) - set(names))
        if missing or unexpected:
            problem = (f"JSON object: does not have named input: {missing[0]}" if missing
                       else f"JSON object: has unexpected input: {unexpected[0]}")
            raise ServingError(f"Failed to process element: {index} of 'instances' list. Error: {problem} "
                               f"(the signature's inputs are: {', '.join(names)})")
    return {name: to_array([instance[name] for instance in instances], input_dtypes[name], f"'instances' key {name}")
            for name in names}


def _columnar_tensors(inputs, names, input_dtypes):
    if _is_named_object(inputs):
        for name in names:
            if name not in inputs:
                raise ServingError(f"Missing named input: {name} in 'inputs' object "
                                   f"(the signature's inputs are: {', '.join(names)})")
        return {name: to_array(inputs[name], input_dtypes[name], f"'inputs' key {name}") for name in names}
    if len(names) != 1:
        raise ServingError("'inputs' is not an object, but the signature has several inputs: " + ", ".join(names))
    return {names[0]: to_array(inputs, input_dtypes[names[0]], "'inputs'")}


def to_array(value, dtype_name, where="input"):
    """Converts nested JSON lists to a numpy array of the TF dtype `dtype_name`, checking every element's type."""
    if dtype_name == "DT_STRING":
        return _regular_array(_decode_strings(value), where, dtype=object)
    target = NUMPY_DTYPES[dtype_name]
    array = _regular_array(value, where)
    if array.size == 0:
        return array.astype(target)
    kind = array.dtype.kind
    if target.kind == "b":
        accepted = kind == "b"
    elif target.kind in "iu":
        accepted = kind in "iu"
    else:
        accepted = kind in "iuf"
    if not accepted:
        bad = _first_element(value, lambda v: not _json_matches(v, target))
        if bad is _NOT_FOUND:  # integers too large for any fixed-width type
            raise ServingError(f"{where}: a value is out of range for type: {_type_name(target)}")
        raise _type_error(bad, target)
    if kind != "b" and _has_bool_leaf(value, array.ndim):  # numpy reads [true, 1] as numbers
        raise _type_error(_first_element(value, lambda v: isinstance(v, bool)), target)
    if target.kind in "iu":
        info = np.iinfo(target)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            bad = int(low) if low < info.min else int(high)
            raise ServingError(f"JSON Value: {bad} is out of range for type: {_type_name(target)} in {where}")
    return array.astype(target)


def _regular_array(value, where, dtype=None):
    """`np.array(value)`, but a ragged nesting (items of different shapes) is a clear 400, not an object array."""
    try:
        array = np.array(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        array = None
    # numpy refuses ragged numbers itself; object arrays (strings, mixed values) may hide a ragged nesting.
    if array is None or (array.dtype == object and array.shape != _nested_shape(value)):
        raise ServingError(f"{where}: all elements must be lists of the same shape (a tensor), or values of one "
                           "type; got nested lists of different lengths or mixed types")
    return array


def _has_bool_leaf(value, depth):
    """Whether a regular nesting of lists `depth` deep holds a JSON bool (a Python bool) among its leaves."""
    if depth == 0:
        return isinstance(value, bool)
    leaves = value
    for _ in range(depth - 1):
        leaves = itertools.chain.from_iterable(leaves)
    return bool in set(map(type, leaves))


def _nested_shape(value):
    """The shape a regular nesting of lists has, or None if the nesting is ragged."""
    if not isinstance(value, list):
        return ()
    if not value:
        return (0,)
    shapes = {_nested_shape(item) for item in value}
    if len(shapes) != 1 or None in shapes:
        return None
    return (len(value),) + shapes.pop()


def _decode_strings(value):
    """Nested JSON strings / `{"b64": ...}` objects -> the same nesting of bytes."""
    if isinstance(value, list):
        return [_decode_strings(item) for item in value]
    if isinstance(value, str):
        return string_bytes(value)
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ServingError(f"Unable to base64 decode: {_preview(value['b64'])} (expected the standard "
                               "alphabet A-Z a-z 0-9 + / with = padding; URL-safe base64 is not accepted)") from None
    raise _type_error(value, NUMPY_DTYPES["DT_STRING"])


def _json_matches(value, target):
    if isinstance(value, bool):
        return target.kind == "b"
    if isinstance(value, int):
        return target.kind in "iuf"
    if isinstance(value, float):
        return target.kind == "f"
    return False


def _first_element(value, is_bad):
    """The first leaf of a nesting of lists for which `is_bad` holds (the value itself if it is not a list)."""
    if isinstance(value, list):
        for item in value:
            found = _first_element(item, is_bad)
            if found is not _NOT_FOUND:
                return found
        return _NOT_FOUND
    return value if is_bad(value) else _NOT_FOUND


_NOT_FOUND = object()


def _type_error(value, target):
    return ServingError(f"JSON Value: {_preview(json.dumps(value))} Type: {_json_type(value)} "
                        f"is not of expected type: {_type_name(target)}")


def _type_name(dtype):
    """TF's name of a dtype ("float", "double", "int32", "string"), as in TF Serving's messages."""
    if dtype == np.dtype(object):
        return "string"
    return {"float32": "float", "float64": "double"}.get(dtype.name, dtype.name)


def _json_type(value):
    if isinstance(value, bool):
        return "Bool"
    if isinstance(value, (int, float)):
        return "Number"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, dict):
        return "Object"
    return "Null"


def _is_named_object(value):
    return isinstance(value, dict) and not (set(value) == {"b64"})


def _preview(text, limit=80):
    return text if len(text) <= limit else text[:limit] + "..."


@out_of_memory_is_429("encoding the response")
def predict_response(outputs, row_format):
    """The JSON text answering a predict request: `outputs` maps output names to arrays."""
    names = sorted(outputs)
    if not row_format:
        if len(names) == 1:
            return '{"outputs":' + encode_tensor(outputs[names[0]], names[0]) + "}"
        return '{"outputs":{' + ",".join(f"{json.dumps(n)}:{encode_tensor(outputs[n], n)}" for n in names) + "}}"
    batch = None
    for name in names:
        shape = np.shape(outputs[name])
        if not shape:
            raise ServingError(f"Tensor name: {name} has no batch dimension; use the columnar ('inputs') format")
        if batch is None:
            batch = shape[0]
        elif shape[0] != batch:
            raise ServingError(f"Tensor name: {name} has inconsistent batch size: {shape[0]} expecting: {batch}")
    if len(names) == 1:
        items = _encode_items(outputs[names[0]], names[0])
    else:
        columns = {name: _encode_items(outputs[name], name) for name in names}
        items = ["{" + ",".join(f"{json.dumps(name)}:{columns[name][i]}" for name in names) + "}"
                 for i in range(batch)]
    return '{"predictions":[' + ",".join(items) + "]}"


def _encode_items(array, name):
    """The JSON text of each batch item of `array` (dim 0)."""
    return [encode_tensor(item, name) for item in np.asarray(array)]


def encode_tensor(array, name=""):
    """The JSON text of one tensor (nested lists); `name` decides whether bytes are written as b64."""
    array = np.asarray(array)
    kind = array.dtype.kind
    if kind in "iub":
        return json.dumps(array.tolist(), separators=(",", ":"))
    if kind == "f":
        return _nest(_float_strings(array))
    if kind in "OSU":
        if name.endswith("_bytes"):
            encode = _b64_json
        else:
            encode = _text_json
        strings = np.frompyfunc(encode, 1, 1)(array) if array.ndim else np.array(encode(array.item()), dtype=object)
        return _nest(np.asarray(strings, dtype=object))
    raise ServingError(f"Output tensor {name!r} has dtype {array.dtype}, which the JSON API does not support", 501)


def _b64_json(value):
    return '{"b64":"' + base64.b64encode(_as_bytes(value)).decode("ascii") + '"}'


def _text_json(value):
    return json.dumps(_as_bytes(value).decode("utf-8", errors="replace"))


def _as_bytes(value):
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _float_strings(array):
    """Each float as TF Serving prints it: `%.6g` (float32) unless more digits are needed to round-trip."""
    short, full = _FLOAT_DIGITS.get(array.dtype, (15, 17))
    if array.dtype not in _FLOAT_DIGITS:
        array = array.astype(np.float64)
    flat = array.ravel()
    strings = np.char.mod(f"%.{short}g", flat).astype("<U32")
    finite = np.isfinite(flat)
    with np.errstate(invalid="ignore", over="ignore"):
        inexact = finite & (strings.astype(array.dtype) != flat)
    if inexact.any():
        strings[inexact] = np.char.mod(f"%.{full}g", flat[inexact])
    if not finite.all():
        strings[np.isnan(flat)] = "NaN"
        strings[np.isposinf(flat)] = "Infinity"
        strings[np.isneginf(flat)] = "-Infinity"
    return strings.reshape(array.shape)


def _nest(strings):
    """Joins an array of JSON element texts into nested JSON lists."""
    if strings.ndim == 0:
        return str(strings.item())
    if strings.ndim == 1:
        return "[" + ",".join(strings.tolist()) + "]"
    return "[" + ",".join(_nest(row) for row in strings) + "]"


def image_headers(inputs):
    """{input name: [(format, width, height), or None where an item is not a readable image header]} of the encoded
    images in the DT_STRING inputs (object arrays of bytes in `inputs`, {name: array}), read once per request for
    the pixel limit and for batching. ServingError (400) for an image past Pillow's decompression-bomb limit."""
    headers = {}
    for name, array in inputs.items():
        array = np.asarray(array)
        if array.dtype != object:
            continue
        headers[name] = []
        for index, item in enumerate(array.ravel()):
            try:
                headers[name].append(image_dimensions(item) if isinstance(item, bytes) else None)
            except Image.DecompressionBombError:
                raise ServingError(f"Image too large: input {name} item {index} declares more pixels than Pillow's "
                                   f"decompression-bomb limit ({2 * Image.MAX_IMAGE_PIXELS}); send a smaller "
                                   "image") from None
    return headers


def check_image_pixels(headers, max_pixels):
    """Raises ServingError (400) if an image in `headers` (`image_headers`) declares more than `max_pixels`
    pixels; None or 0: no limit."""
    if not max_pixels:
        return
    for name, found in headers.items():
        for index, header in enumerate(found):
            if header is not None and header[1] * header[2] > max_pixels:
                kind, width, height = header
                raise ServingError(f"Image too large: input {name} item {index} is a {kind} image of "
                                   f"{width}x{height} = {width * height} pixels, more than the server's "
                                   f"--max_image_pixels {max_pixels}; send a smaller image")


def error_body(message):
    """The JSON text of an error reply."""
    return json.dumps({"error": message})
