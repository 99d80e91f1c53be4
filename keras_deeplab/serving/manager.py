"""Which SavedModel versions are served: polls each model's base path for numeric version folders, loads the
ones its version policy wants (newest first, each into its own Session), retires the ones it no longer wants
after the new ones are available, and answers version status like TF Serving.
"""
import logging
import os
import threading

import tensorflow as tf

from keras_deeplab.serving.json_tensor import ServingError
from keras_deeplab.serving.servable import ERROR_CODE_NAMES, Servable

log = logging.getLogger("keras_deeplab.serving")


def version_folders(base_path):
    """{version: folder} for the numeric folders under `base_path` (other names, e.g. staging folders, ignored)."""
    try:
        entries = list(os.scandir(base_path))
    except OSError:
        return {}
    return {int(entry.name): entry.path for entry in entries if entry.name.isdigit() and entry.is_dir()}


def _fingerprint(folder):
    """What changes when a folder's files change (to retry a failed load only after the folder changed)."""
    items = []
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            items.append((os.path.relpath(path, folder), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(items))


def _error_code(error):
    return ERROR_CODE_NAMES.get(error.error_code, "UNKNOWN") if isinstance(error, tf.errors.OpError) else "UNKNOWN"


class ManagedModel:
    """The loaded versions of one model (a `ModelConfig`) and the state of every version seen."""

    def __init__(self, config, session_config=None, warmup=True):
        self.config = config
        self.session_config = session_config
        self.warmup = warmup
        self._servables = {}
        self._states = {}  # version -> (state, error_code, error_message)
        self._failed = {}  # version -> fingerprint of the folder that failed to load
        self._lock = threading.Lock()

    def poll(self):
        """Loads wanted versions that are new, then retires the loaded ones that are no longer wanted."""
        folders = version_folders(self.config.base_path)
        wanted = self.config.select(folders)
        for version in sorted(wanted, reverse=True):
            if version in self._servables:
                continue
            fingerprint = _fingerprint(folders[version])
            if self._failed.get(version) == fingerprint:
                continue
            self._set_state(version, "LOADING")
            try:
                servable = Servable(folders[version], version, self.session_config, self.warmup)
            except Exception as error:  # noqa: BLE001 - a bad version must not stop the server
                self._failed[version] = fingerprint
                self._set_state(version, "END", _error_code(error), f"{type(error).__name__}: {error}")
                log.error("model %s version %d failed to load: %s", self.config.name, version, error)
                continue
            self._failed.pop(version, None)
            with self._lock:
                self._servables[version] = servable
            self._set_state(version, "AVAILABLE")
            log.warning("model %s version %d is available (%s)", self.config.name, version, folders[version])
        # Availability preserving, as TF Serving's default: old versions go only once a wanted one serves.
        if any(version in self._servables for version in wanted) or not folders:
            self._retire_unwanted(wanted)
        with self._lock:  # forget failures of folders that are gone
            for version in [v for v in self._failed if v not in folders]:
                self._failed.pop(version)
                self._states.pop(version, None)

    def _retire_unwanted(self, wanted):
        for version in list(self._servables):
            if version not in wanted:
                with self._lock:
                    servable = self._servables.pop(version)
                servable.retire()
                self._set_state(version, "END")
                log.warning("model %s version %d unloaded", self.config.name, version)

    def _set_state(self, version, state, error_code="OK", error_message=""):
        with self._lock:
            self._states[version] = (state, error_code, error_message)

    def acquire(self, version=None, label=None):
        """The servable for a request (newest available when `version` and `label` are None), acquired: call
        its `release()` when done. ServingError 404 when there is none."""
        if label is not None:
            if label not in self.config.version_labels:
                raise ServingError(f"Servable not found for request: unknown version label {label!r} of model "
                                   f"{self.config.name}", 404)
            version = self.config.version_labels[label]
        with self._lock:
            if version is None:
                servable = self._servables[max(self._servables)] if self._servables else None
            else:
                servable = self._servables.get(version)
            if servable is not None and servable.acquire():
                return servable
        request = f"Latest({self.config.name})" if version is None else f"Specific({self.config.name}, {version})"
        raise ServingError(f"Servable not found for request: {request}", 404)

    def status(self, version=None, label=None):
        """TF Serving's model status body for all versions seen, or one; ServingError 404 if unknown."""
        if label is not None:
            if label not in self.config.version_labels:
                raise ServingError(f"Unrecognized servable version label: {label}", 404)
            version = self.config.version_labels[label]
        with self._lock:
            states = dict(self._states)
        if version is not None:
            if version not in states:
                raise ServingError(f"Could not find version {version} of model {self.config.name}", 404)
            states = {version: states[version]}
        if not states:
            raise ServingError(f"Could not find any versions of model {self.config.name}", 404)
        return {"model_version_status": [
            {"version": str(v), "state": state, "status": {"error_code": code, "error_message": message}}
            for v, (state, code, message) in sorted(states.items(), reverse=True)]}

    def close(self):
        with self._lock:
            servables, self._servables = list(self._servables.values()), {}
        for servable in servables:
            servable.retire()


class ModelManager:
    """All served models, polled every `poll_seconds` by a background thread (0 or less: only at start)."""

    def __init__(self, configs, session_config=None, warmup=True, poll_seconds=1.0):
        self.models = {config.name: ManagedModel(config, session_config, warmup) for config in configs}
        if len(self.models) != len(configs):
            raise ValueError("model names must be unique")
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = None

    def model(self, name):
        if name not in self.models:
            raise ServingError(f"Servable not found for request: Latest({name})", 404)
        return self.models[name]

    def poll(self):
        for model in self.models.values():
            try:
                model.poll()
            except Exception:  # noqa: BLE001 - keep polling whatever one model's folder does
                log.exception("polling model %s failed", model.config.name)

    def start(self):
        """Polls once now, then in the background."""
        self.poll()
        if self.poll_seconds > 0:
            self._thread = threading.Thread(target=self._run, name="version-poller", daemon=True)
            self._thread.start()

    def _run(self):
        while not self._stop.wait(self.poll_seconds):
            self.poll()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for model in self.models.values():
            model.close()
