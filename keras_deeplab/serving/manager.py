"""Which SavedModel versions are served: polls each model's base path for numeric version folders, loads the
ones its version policy wants (newest first, each into its own Session), retires the ones it no longer wants
after the new ones are available, and answers version status like TF Serving. With a models.config reader it
also re-reads the config (TF Serving's `--model_config_file_poll_wait_seconds`): models added, removed or changed.

Not-found errors use one wording, the contract's: 404 `Servable not found for request: Latest(name)` or
`Specific(name, version)`, for predict, metadata and status alike; an unknown version label is TF Serving's
400 `Unrecognized servable version label: label`.
"""
import logging
import os
import threading

import tensorflow as tf

from keras_deeplab.serving.contract import version_folders
from keras_deeplab.serving.json_tensor import ServingError
from keras_deeplab.serving.servable import ERROR_CODE_NAMES, Servable

log = logging.getLogger("keras_deeplab.serving")


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


def servable_not_found(name, version=None):
    """TF Serving's 404 for a model or version that is not served (the request as its ServableRequest prints)."""
    request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
    return ServingError(f"Servable not found for request: {request}", 404)


def unknown_label(label):
    """TF Serving's error for a version label that the model's config does not define (InvalidArgument: 400)."""
    return ServingError(f"Unrecognized servable version label: {label}", 400)


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
                raise unknown_label(label)
            version = self.config.version_labels[label]
        with self._lock:
            if version is None:
                servable = self._servables[max(self._servables)] if self._servables else None
            else:
                servable = self._servables.get(version)
            if servable is not None and servable.acquire():
                return servable
        raise servable_not_found(self.config.name, version)

    def status(self, version=None, label=None):
        """TF Serving's model status body for all versions seen, or one; ServingError 404 for an unknown version
        (or none at all), 400 for an unknown label."""
        if label is not None:
            if label not in self.config.version_labels:
                raise unknown_label(label)
            version = self.config.version_labels[label]
        with self._lock:
            states = dict(self._states)
        if version is not None:
            if version not in states:
                raise servable_not_found(self.config.name, version)
            states = {version: states[version]}
        if not states:
            raise servable_not_found(self.config.name)
        return {"model_version_status": [
            {"version": str(v), "state": state, "status": {"error_code": code, "error_message": message}}
            for v, (state, code, message) in sorted(states.items(), reverse=True)]}

    def close(self):
        with self._lock:
            servables, self._servables = list(self._servables.values()), {}
        for servable in servables:
            servable.retire()


class ModelManager:
    """All served models, polled every `poll_seconds` by a background thread (0 or less: only at start).

    With `config_reader` (a callable returning a list of ModelConfig, e.g. reading a models.config) and
    `config_poll_seconds` > 0, the same thread re-reads the config that often and applies it (`reconfigure`).
    """

    def __init__(self, configs, session_config=None, warmup=True, poll_seconds=1.0, *, config_reader=None,
                 config_poll_seconds=0.0):
        self.session_config = session_config
        self.warmup = warmup
        self.models = self._unique({config.name: ManagedModel(config, session_config, warmup)
                                    for config in configs}, configs)
        self.poll_seconds = poll_seconds
        self.config_reader = config_reader
        self.config_poll_seconds = config_poll_seconds if config_reader is not None else 0.0
        self._stop = threading.Event()
        self._thread = None

    @staticmethod
    def _unique(models, configs):
        if len(models) != len(configs):
            raise ValueError("model names must be unique")
        return models

    def model(self, name, version=None):
        """The ManagedModel called `name`; ServingError 404 (for `version`, or the latest) if there is none."""
        model = self.models.get(name)
        if model is None:
            raise servable_not_found(name, version)
        return model

    def reconfigure(self, configs):
        """Serves the models of `configs` from now on: new names are added, missing ones unloaded, a changed base
        path reloads that model, and a changed version policy or labels applies at the next poll. Run it on the
        polling thread (or before `start`), not beside a running poll."""
        old = self.models
        models = {}
        for config in configs:
            current = old.get(config.name)
            if current is not None and current.config.base_path == config.base_path:
                current.config = config
                models[config.name] = current
            else:
                models[config.name] = ManagedModel(config, self.session_config, self.warmup)
        self.models = self._unique(models, configs)  # one assignment: requests see the old or the new dict
        for name, model in old.items():
            if self.models.get(name) is not model:
                model.close()
                log.warning("model %s unloaded (config changed)", name)

    def reload_config(self):
        """Re-reads the config with `config_reader` and applies it if it changed; a config that cannot be read
        is logged and the current one kept. Returns True if it changed."""
        try:
            configs = self.config_reader()
        except Exception as error:  # noqa: BLE001 - a bad edit must not stop the server
            log.error("re-reading the model config failed, keeping the current one: %s", error)
            return False
        if [vars(c) for c in configs] == [vars(m.config) for m in self.models.values()]:
            return False
        try:
            self.reconfigure(configs)
        except ValueError as error:
            log.error("the new model config is not valid, keeping the current one: %s", error)
            return False
        log.warning("model config reloaded: serving %s", ", ".join(self.models))
        return True

    def poll(self):
        for model in list(self.models.values()):
            try:
                model.poll()
            except Exception:  # noqa: BLE001 - keep polling whatever one model's folder does
                log.exception("polling model %s failed", model.config.name)

    def start(self):
        """Polls once now, then in the background."""
        self.poll()
        if self.poll_seconds > 0 or self.config_poll_seconds > 0:
            self._thread = threading.Thread(target=self._run, name="version-poller", daemon=True)
            self._thread.start()

    def _run(self):
        import time

        intervals = [s for s in (self.poll_seconds, self.config_poll_seconds) if s > 0]
        next_config = time.monotonic() + self.config_poll_seconds
        while not self._stop.wait(min(intervals)):
            changed = False
            if self.config_poll_seconds > 0 and time.monotonic() >= next_config:
                next_config = time.monotonic() + self.config_poll_seconds
                changed = self.reload_config()
            if self.poll_seconds > 0 or changed:
                self.poll()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for model in self.models.values():
            model.close()
