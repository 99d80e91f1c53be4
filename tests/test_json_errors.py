"""parse_predict_body answers bodies that TF Serving's JSON parser rejects with TF Serving's own messages.

Expected texts come from tensorflow/serving tensorflow_serving/util/json_tensor.cc (ParseJson, FillSignature,
FillPredictRequestFromJson: "JSON Parse error: ", GetParseError_En(code), " at offset: ", GetErrorOffset()) and
RapidJSON 1.1.0 (the version TF Serving's workspace pins): include/rapidjson/error/en.h for the texts,
include/rapidjson/reader.h for where the reader stops (the offsets, in bytes, worked out by hand from its code).
"""
import json

import pytest

from keras_deeplab.serving import json_tensor
from keras_deeplab.serving.json_tensor import ServingError, parse_predict_body

PARSE_ERRORS = [
    # (body, GetParseError_En text, RapidJSON's offset)
    # Parse(): whitespace skipped, then Peek() == '\0' -> kParseErrorDocumentEmpty at Tell().
    (b"   \n", "The document is empty.", 4),
    # MemoryStream::Peek() reads a NUL byte as the end of the document.
    (b"\0{}", "The document is empty.", 0),
    # Truncated: ParseArray finds '\0' where ',' or ']' should be.
    (b'{"instances": [1, 2', "Missing a comma or ']' after an array element.", 19),
    (b'{"instances": [1]', "Missing a comma or '}' after an object member.", 17),
    (b'{"instances": "abc', "Missing a closing quotation mark in string.", 18),
    (b'{"instances": [1], "inputs', "Missing a closing quotation mark in string.", 26),
    (b'{"instances": [1], ', "Missing a name for object member.", 19),
    (b'{"instances" [1]}', "Missing a colon after a name of object member.", 13),
    # Trailing garbage: kParseErrorDocumentRootNotSingular where the next non-space character is.
    (b'{"instances": [1]} x', "The document root must not be followed by other values.", 19),
    (b'{"instances": [1]}}', "The document root must not be followed by other values.", 18),
    # No trailing commas (kParseTrailingCommasFlag is not set).
    (b'{"instances": [1,]}', "Invalid value.", 17),
    (b'{"instances": [1],}', "Missing a name for object member.", 18),
    # ParseNull / ParseTrue consume the matching part of the literal; ParseNumber stops after '-'.
    (b'{"instances": [nul]}', "Invalid value.", 18),
    (b'{"instances": [tru]}', "Invalid value.", 18),
    (b'{"instances": [-x]}', "Invalid value.", 16),
    (b'{"instances": [NaX]}', "Invalid value.", 17),
    (b'{"instances": [Infinit]}', "Invalid value.", 22),
    # Numbers: the error is after '.', or after 'e' and its sign.
    (b'{"instances": [1.]}', "Miss fraction part in number.", 17),
    (b'{"instances": [1e+]}', "Miss exponent in number.", 18),
    (b'{"instances": [1.5.]}', "Missing a comma or ']' after an array element.", 18),
    # Strings: escapes are reported at their backslash, control characters where they are.
    (b'{"instances": ["\\q"]}', "Invalid escape character in string.", 16),
    (b'{"instances": ["\x01"]}', "Invalid escape character in string.", 16),
    (b'{"instances": ["\\u12G4"]}', "Incorrect hex digit after \\u escape in string.", 16),
    (b'{"instances": ["\\ud800\\u12"]}', "Incorrect hex digit after \\u escape in string.", 16),
    (b'{"instances": ["\\ud800x"]}', "The surrogate pair in string is invalid.", 16),
    (b'{"instances": ["\\ud800\\u0041"]}', "The surrogate pair in string is invalid.", 16),
    (b'{"instances": ["\\', "Invalid escape character in string.", 16),
    # Bad UTF-8 outside a string is not a value; offsets count bytes (the BOM, 'é' as two bytes).
    (b'{"instances": [\xff]}', "Invalid value.", 15),
    (b'{"\xc3\xa9": x}', "Invalid value.", 7),
    (b'\xef\xbb\xbf{"instances" 1}', "Missing a colon after a name of object member.", 16),
]


@pytest.mark.parametrize("body, text, offset", PARSE_ERRORS)
def test_rapidjson_parse_errors_have_tf_serving_text_and_offset(body, text, offset):
    with pytest.raises(ServingError) as caught:
        parse_predict_body(body)
    assert caught.value.status == 400
    assert caught.value.message == f"JSON Parse error: {text} at offset: {offset}"


def test_an_empty_body_has_tf_servings_own_message():
    # ParseJson's check before RapidJSON runs: no period, no offset.
    for body in (b"", ""):
        with pytest.raises(ServingError) as caught:
            parse_predict_body(body)
        assert caught.value.message == "JSON Parse error: The document is empty"


def pretty(document):
    """RapidJSON's PrettyWriter layout (4-space indent, ": " after keys), written out for the documents below."""
    return json.dumps(document, indent=4)


@pytest.mark.parametrize("document, suffix", [
    ([1, 2], "Is not object"),
    ("text", "Is not object"),
    ({"instances": [1], "inputs": [1]},
     "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "),
    ({"instances": [1], "signature_name": 5},
     "not formatted correctly. 'signature_name' key must be a string value."),
    ({"instances": {"x": 1}}, "Excepting 'instances' to be an list/array"),
    ({"instances": []}, "No values in 'instances' array"),
])
def test_format_errors_print_the_document_as_tf_serving(document, suffix):
    with pytest.raises(ServingError) as caught:
        parse_predict_body(json.dumps(document).encode())
    assert caught.value.status == 400
    assert caught.value.message == f"JSON Value: {pretty(document)} {suffix}"


def test_the_pretty_layout_is_rapidjsons():
    # The layout RapidJSON's PrettyWriter writes for this document (prettywriter.h: "\n" + 4 spaces per level).
    expected = '{\n    "signature_name": [\n        1,\n        2\n    ],\n    "instances": [\n        3\n    ]\n}'
    with pytest.raises(ServingError) as caught:
        parse_predict_body(b'{"signature_name": [1,2], "instances": [3]}')
    assert caught.value.message.startswith(f"JSON Value: {expected} not formatted correctly.")


def test_missing_instances_and_inputs():
    with pytest.raises(ServingError) as caught:
        parse_predict_body(b'{"signature_name": "serving_default"}')
    assert caught.value.message == "Missing 'inputs' or 'instances' key"


def test_bodies_rapidjson_accepts_are_accepted():
    # A NUL byte ends RapidJSON's MemoryStream; the BOM is skipped; undecodable bytes inside strings are kept as
    # they are (no kParseValidateEncodingFlag), so a DT_STRING input gets exactly those bytes.
    assert parse_predict_body(b'{"inputs": [1]}\0 ignored').data == [1]
    assert parse_predict_body(b'\xef\xbb\xbf{"inputs": [1]}').data == [1]
    request = parse_predict_body(b'{"instances": ["\xff\xfe", "\xc3\xa9", "\\ud83d\\ude00"]}')
    expected = [b"\xff\xfe", "é".encode(), "\U0001F600".encode()]
    assert json_tensor.to_array(request.data, "DT_STRING").tolist() == expected
    assert parse_predict_body(b'{"instances": [1], "signature_name": ""}').signature_name == "serving_default"
    assert parse_predict_body(b'{"inputs": [NaN, -Infinity]}').data[1] == float("-inf")
