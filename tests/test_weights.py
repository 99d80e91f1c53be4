"""keras_deeplab.weights: download into Keras' cache with the hash checked, mirrors, and errors that say what to do;
a real HTTP server on 127.0.0.1 stands in for the publisher."""
import hashlib
import os

import pytest

from helpers.http_files import FileServer, refused_url
from keras_deeplab.weights import WEIGHTS_URL_ENV, WeightsError, WeightsFile, cache_path, fetch, is_cached

BODY = os.urandom(300_000)
NAME = "model-0123abcd.pth"


def weights_file(base_url, body=BODY):
    return WeightsFile(NAME, base_url, len(body), hashlib.sha256(body).hexdigest())


@pytest.fixture
def server():
    with FileServer() as server:
        server.files[f"/models/{NAME}"] = BODY
        yield server


@pytest.fixture(autouse=True)
def no_mirror(monkeypatch):
    monkeypatch.delenv(WEIGHTS_URL_ENV, raising=False)


def cached_files(cache_dir):
    folder = cache_dir / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_first_call_downloads_and_checks_the_second_uses_the_cache(server, tmp_path):
    weights = weights_file(server.url + "/models/")
    assert not is_cached(weights, tmp_path)
    path = fetch(weights, cache_dir=tmp_path)
    assert path == str(tmp_path / "models" / NAME) == str(cache_path(weights, tmp_path))
    assert open(path, "rb").read() == BODY and is_cached(weights, tmp_path)
    assert fetch(weights, cache_dir=tmp_path) == path
    assert server.requests == [f"/models/{NAME}"]  # one download
    assert cached_files(tmp_path) == [NAME]  # no partial file left beside it


def test_cache_defaults_to_keras_home(server, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    path = fetch(weights_file(server.url + "/models"))
    assert path == str(tmp_path / "keras_home" / "models" / NAME)


def test_corrupted_body_fails_the_sha256_check_and_caches_nothing(server, tmp_path):
    server.files[f"/models/{NAME}"] = BODY[:-1] + bytes([BODY[-1] ^ 1])  # same size, one bit off
    weights = weights_file(server.url + "/models")
    with pytest.raises(WeightsError) as error:
        fetch(weights, cache_dir=tmp_path)
    message = str(error.value)
    assert "SHA256" in message and weights.file_hash in message
    assert f"{server.url}/models/{NAME}" in message and str(cache_path(weights, tmp_path)) in message
    assert WEIGHTS_URL_ENV in message  # how to place it by hand
    assert cached_files(tmp_path) == []


def test_partial_download_fails_and_caches_nothing(server, tmp_path):
    server.truncate[f"/models/{NAME}"] = len(BODY) // 3
    weights = weights_file(server.url + "/models")
    with pytest.raises(WeightsError) as error:
        fetch(weights, cache_dir=tmp_path)
    assert f"{server.url}/models/{NAME}" in str(error.value)
    assert cached_files(tmp_path) == []


def test_404_names_the_url_the_cache_path_and_the_remedy(server, tmp_path):
    weights = weights_file(server.url + "/elsewhere")
    with pytest.raises(WeightsError) as error:
        fetch(weights, cache_dir=tmp_path)
    message = str(error.value)
    assert f"{server.url}/elsewhere/{NAME}" in message and "404" in message
    assert str(cache_path(weights, tmp_path)) in message and "copy it to" in message
    assert cached_files(tmp_path) == []


def test_refused_connection_is_a_clear_error(tmp_path):
    url = refused_url()
    with pytest.raises(WeightsError) as error:
        fetch(weights_file(url), cache_dir=tmp_path)
    assert f"{url}/{NAME}" in str(error.value) and "refused" in str(error.value).lower()
    assert cached_files(tmp_path) == []


def test_mirror_from_the_environment_and_from_the_argument(server, tmp_path, monkeypatch):
    weights = weights_file(refused_url())  # the publisher is unreachable
    assert open(fetch(weights, base_url=server.url + "/models", cache_dir=tmp_path / "a"), "rb").read() == BODY
    monkeypatch.setenv(WEIGHTS_URL_ENV, server.url + "/models/")
    assert open(fetch(weights, cache_dir=tmp_path / "b"), "rb").read() == BODY
    assert len(server.requests) == 2


def test_local_folder_as_mirror_is_used_in_place_and_checked(tmp_path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / NAME).write_bytes(BODY)
    weights = weights_file(refused_url())
    assert fetch(weights, base_url=str(folder), cache_dir=tmp_path / "cache") == str(folder / NAME)
    assert fetch(weights, base_url=f"file://{folder}", cache_dir=tmp_path / "cache") == str(folder / NAME)
    (folder / NAME).write_bytes(BODY[:1000])
    with pytest.raises(WeightsError, match="1,000 bytes"):
        fetch(weights, base_url=str(folder))
    with pytest.raises(WeightsError, match="not found"):
        fetch(weights, base_url=str(tmp_path / "missing"))


def test_a_damaged_cached_copy_is_downloaded_again(server, tmp_path):
    weights = weights_file(server.url + "/models")
    target = cache_path(weights, tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x" * len(BODY))  # right size, wrong content: is_cached says yes, the hash says no
    assert is_cached(weights, tmp_path)
    assert open(fetch(weights, cache_dir=tmp_path), "rb").read() == BODY
    assert len(server.requests) == 1
