"""Weight files: where they come from, and a download cache that never holds a bad file.

A `WeightsFile` names a file, the base URL it is published under and its hash. `fetch` returns a local path:
the cached copy (under Keras' cache, `$KERAS_HOME/models`, the folder keras.applications uses) if it is whole,
else a fresh download with `keras.utils.get_file` into a temporary name, checked and only then renamed into
place. Air-gapped users point `KERAS_DEEPLAB_WEIGHTS_URL` (or `base_url=`) at a mirror: a URL or a local folder
under which the files are found by their own names.
"""
import dataclasses
import hashlib
import os
from pathlib import Path

WEIGHTS_URL_ENV = "KERAS_DEEPLAB_WEIGHTS_URL"
CACHE_SUBDIR = "models"


class WeightsError(OSError):
    """A weight file that cannot be had: not downloadable, corrupt, or not found locally."""


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A published weight file: its name, the base URL it lives under, its size and its hash (`hash_algorithm`
    "sha256", or "md5" where only that is published; None when the publisher pins none)."""

    file: str
    base_url: str
    size: int | None = None
    file_hash: str | None = None
    hash_algorithm: str = "sha256"

    def url(self, base_url=None):
        """The file's URL under `base_url`, else `$KERAS_DEEPLAB_WEIGHTS_URL`, else its publisher's."""
        base = base_url or os.environ.get(WEIGHTS_URL_ENV) or self.base_url
        return base.rstrip("/") + "/" + self.file


def cache_path(weights, cache_dir=None):
    """Where `fetch` keeps `weights`: `<cache_dir or $KERAS_HOME or ~/.keras>/models/<file>`."""
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")  # as Keras picks its home
    return Path(cache_dir or keras_home).expanduser() / CACHE_SUBDIR / weights.file


def is_cached(weights, cache_dir=None):
    """Whether a copy of the right size is in the cache (the hash is checked when it is used)."""
    path = cache_path(weights, cache_dir)
    return path.is_file() and (weights.size is None or path.stat().st_size == weights.size)


def file_digest(path, algorithm="sha256"):
    """The hex digest of the file at `path`."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(weights, path):
    """None if the file at `path` is `weights` (size and hash), else what is wrong with it."""
    size = os.path.getsize(path)
    if weights.size is not None and size != weights.size:
        return f"it has {size:,} bytes, expected {weights.size:,} (a partial or different file)"
    if weights.file_hash is not None:
        actual = file_digest(path, weights.hash_algorithm)
        if actual != weights.file_hash:
            return f"its {weights.hash_algorithm.upper()} is {actual}, expected {weights.file_hash}"
    return None


def _by_hand(weights, url, target):
    return (f"To place it by hand, download {url} on a machine that can reach it and copy it to {target}, "
            f"or set {WEIGHTS_URL_ENV} (or base_url=) to a URL or folder holding {weights.file}, "
            "or pass the local file's path.")


def fetch(weights, *, base_url=None, cache_dir=None):
    """A local path holding `weights`, checked against its size and hash; downloads into the cache if needed.

    `base_url` (else `$KERAS_DEEPLAB_WEIGHTS_URL`) may be a URL or a local folder; a folder's file is used in
    place. Raises `WeightsError` naming the URL, the cache path and how to place the file by hand.
    """
    url = weights.url(base_url)
    local = url[len("file://"):] if url.startswith("file://") else url
    if "://" not in local:  # a mirror folder on disk
        if not os.path.isfile(local):
            raise WeightsError(f"Weights file {local} not found. {_by_hand(weights, weights.url(), local)}")
        problem = check_file(weights, local)
        if problem:
            raise WeightsError(f"Weights file {local} is not {weights.file}: {problem}.")
        return local

    target = cache_path(weights, cache_dir)
    if target.is_file():
        if check_file(weights, target) is None:
            return str(target)
        target.unlink()  # a stale or damaged copy: fetch it again
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    import keras

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        keras.utils.get_file(fname=partial.name, origin=url, cache_dir=str(target.parent.parent),
                             cache_subdir=target.parent.name, force_download=True)
        problem = check_file(weights, partial)
        if problem:
            raise WeightsError(f"Downloaded {url}, but {problem}; nothing was cached. "
                               f"{_by_hand(weights, url, target)}")
        os.replace(partial, target)
    except WeightsError:
        raise
    except Exception as error:  # get_file wraps HTTP and connection errors in a plain Exception
        raise WeightsError(f"Could not download {weights.file} from {url}: {error}. Nothing was cached at "
                           f"{target}. {_by_hand(weights, url, target)}") from error
    finally:
        partial.unlink(missing_ok=True)
    return str(target)
