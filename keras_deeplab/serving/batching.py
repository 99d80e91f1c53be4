"""Request batching across clients, with TensorFlow Serving's semantics (`--enable_batching`,
`--batching_parameters_file`).

Each predict is a task of N rows (the 0th dimension of its inputs). Tasks for the same servable and signature
wait in a queue; the queue's open batch takes tasks until it holds `max_batch_size` rows (a task that does not fit
opens the next batch) or `batch_timeout_micros` have passed since its first task. `num_batch_threads` threads run
the ready batches, oldest first: the tasks' inputs are concatenated along dimension 0 (and padded up to the next of
`allowed_batch_sizes` with copies of the first row, as TF Serving pads), the signature runs once, and every output
is split back along dimension 0, so each task gets its own rows. A queue already holding `max_enqueued_batches`
batches refuses new tasks at once with TF Serving's UNAVAILABLE error (HTTP 503); a task larger than
`max_batch_size` is refused with its INVALID_ARGUMENT error.

One difference, so that batching never changes an answer: TF Serving puts every task of a signature into one
queue and concatenates inputs whose non-batch dimensions differ only with `pad_variable_length_inputs` (padding
the smaller ones, which changes what the model sees). Here tasks whose inputs differ in shape or dtype, or whose
encoded images would give outputs of different sizes (the label maps of `serving_default` are padded to the largest
image of a run), wait in separate queues and are never padded; `pad_variable_length_inputs` is accepted and has no
effect. With the export's `serving_default` signature (each image runs through the model on its own inside the run,
`tf.map_fn`), every client's labels are therefore bit for bit the labels it gets without batching.
"""
import collections
import itertools
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from keras_deeplab.serving.json_tensor import ServingError, image_headers

# TF Serving's messages (tensorflow/core/kernels/batching_util/shared_batch_scheduler.h, batching_session.cc).
QUEUE_FULL_MESSAGE = "The batch scheduling queue to which this task was submitted is full"


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's `BatchingParameters`, with its defaults (BasicBatchScheduler's; threads: one per core)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 0  # 0: the machine's cores
    allowed_batch_sizes: tuple = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {self.max_batch_size}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros must be 0 or positive, got {self.batch_timeout_micros}")
        if self.max_enqueued_batches < 1:
            raise ValueError(f"max_enqueued_batches must be positive, got {self.max_enqueued_batches}")
        if self.num_batch_threads < 0:
            raise ValueError(f"num_batch_threads must be 0 or positive, got {self.num_batch_threads}")
        sizes = tuple(self.allowed_batch_sizes)
        if sizes:  # TF Serving's checks (batching_session.cc)
            if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
                raise ValueError(f"allowed_batch_sizes entries must be positive and monotonically increasing, got "
                                 f"{list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(f"final entry in allowed_batch_sizes ({sizes[-1]}) must equal max_batch_size "
                                 f"({self.max_batch_size})")

    @property
    def threads(self):
        """How many threads run batches."""
        return self.num_batch_threads or os.cpu_count() or 1

    def padded_size(self, size):
        """The batch size a batch of `size` rows runs at: the smallest allowed size that holds it."""
        return next((allowed for allowed in self.allowed_batch_sizes if allowed >= size), size)


def read_batching_parameters(path):
    """BatchingOptions from a text-format `BatchingParameters` file (TF Serving's `--batching_parameters_file`);
    ValueError naming the file and the problem."""
    from keras_deeplab.serving.text_protos import BATCHING_PARAMETERS, parse_text_proto

    message = parse_text_proto(path, BATCHING_PARAMETERS, "--batching_parameters_file")
    values = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        if message.HasField(name):
            values[name] = int(getattr(message, name).value)
    values["allowed_batch_sizes"] = tuple(int(size) for size in message.allowed_batch_sizes)
    values["pad_variable_length_inputs"] = bool(message.pad_variable_length_inputs)
    if not message.HasField("max_batch_size") and values["allowed_batch_sizes"]:
        values["max_batch_size"] = values["allowed_batch_sizes"][-1]
    try:
        return BatchingOptions(**values)
    except ValueError as error:
        raise ValueError(f"--batching_parameters_file {path}: {error}") from None


def batch_rows(inputs):
    """The rows of a task: the common 0th dimension of its inputs; ServingError if they differ."""
    sizes = {name: (np.shape(value)[0] if np.ndim(value) else None) for name, value in inputs.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ServingError("Batching session Run() input tensors must have equal 0th-dimension size "
                           f"(got {sizes})", 400)
    return next(iter(sizes.values()))


def compatibility_key(inputs, headers):
    """What tasks must share to run in one batch without changing anyone's answer: each input's dtype and
    non-batch shape, and for encoded images (their `headers`, from `image_headers`) the largest height and width
    (None when an item is not a readable image: such a task runs in a batch of its own)."""
    key = []
    for name in sorted(inputs):
        array = np.asarray(inputs[name])
        part = (name, array.dtype.str, array.shape[1:])
        if array.dtype == object:
            sizes = headers[name]
            if None in sizes:
                return None
            part += (max(height for _, _, height in sizes), max(width for _, width, _ in sizes))
        key.append(part)
    return tuple(key)


@dataclass(eq=False)
class _Task:
    inputs: dict
    rows: int
    enqueued: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict = None
    error: BaseException = None


@dataclass(eq=False)
class _Batch:
    queue_key: tuple
    servable: object
    signature_name: str
    model_name: str  # for the observers (metrics)
    opened: float = field(default_factory=time.monotonic)
    tasks: list = field(default_factory=list)
    rows: int = 0


class BatchScheduler:
    """Batches concurrent `run` calls per (servable, signature, compatible inputs); see the module doc.

    `on_batch(model_name, servable, signature_name, rows, waits)` is called for every batch run (metrics);
    `on_rejected(model_name, servable, signature_name)` for every task refused because its queue was full.
    """

    def __init__(self, options, *, on_batch=None, on_rejected=None):
        self.options = options
        self._on_batch = on_batch
        self._on_rejected = on_rejected
        self._queues = collections.OrderedDict()  # key -> deque of _Batch (the last one open)
        self._condition = threading.Condition()
        self._stopped = False
        self._unique = itertools.count()
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(options.threads)]
        for thread in self._threads:
            thread.start()

    def run(self, servable, signature_name, inputs, timeout_ms=None, model_name="", headers=None):
        """Runs `servable.run(signature_name, inputs)` as part of a batch and returns this task's outputs.
        `headers`: the inputs' `image_headers`, where the caller read them already."""
        rows = batch_rows(inputs)
        if rows > self.options.max_batch_size:
            raise ServingError(f"Task size {rows} is larger than maximum input batch size "
                               f"{self.options.max_batch_size}", 400)
        compatible = compatibility_key(inputs, image_headers(inputs) if headers is None else headers)
        queue_key = (id(servable), signature_name, compatible if compatible is not None else next(self._unique))
        task = _Task(inputs, rows)
        with self._condition:
            if self._stopped:
                raise ServingError("The batch scheduler is shutting down", 503, "UNAVAILABLE")
            batches = self._queues.setdefault(queue_key, collections.deque())
            if not batches or batches[-1].rows + rows > self.options.max_batch_size or compatible is None:
                if len(batches) >= self.options.max_enqueued_batches:
                    if not batches:
                        del self._queues[queue_key]
                    full = True
                else:
                    full = False
                    batches.append(_Batch(queue_key, servable, signature_name, model_name))
            else:
                full = False
            if not full:
                batches[-1].tasks.append(task)
                batches[-1].rows += rows
                self._condition.notify_all()
        if full:
            if self._on_rejected:
                self._on_rejected(model_name, servable, signature_name)
            raise ServingError(QUEUE_FULL_MESSAGE, 503, "UNAVAILABLE")
        if not task.done.wait(None if not timeout_ms else timeout_ms / 1000.0 + 1.0):
            raise ServingError("Deadline exceeded while the request waited for its batch", 504)
        if task.error is not None:
            raise task.error
        return task.outputs

    def _ready(self, now):
        """(the oldest batch that may run now, seconds until the next one may) under the lock."""
        best, wait = None, None
        timeout = self.options.batch_timeout_micros / 1e6
        for batches in self._queues.values():
            batch = batches[0]
            closed = (len(batches) > 1 or batch.rows >= self.options.max_batch_size
                      or now - batch.opened >= timeout)
            if closed:
                if best is None or batch.opened < best.opened:
                    best = batch
            else:
                remaining = timeout - (now - batch.opened)
                wait = remaining if wait is None else min(wait, remaining)
        return best, wait

    def _work(self):
        while True:
            with self._condition:
                while True:
                    if self._stopped:
                        return
                    batch, wait = self._ready(time.monotonic())
                    if batch is not None:
                        break
                    self._condition.wait(wait)
                batches = self._queues[batch.queue_key]
                batches.popleft()
                if not batches:
                    del self._queues[batch.queue_key]
            self._process(batch)

    def _process(self, batch):
        started = time.monotonic()
        try:
            padded = self.options.padded_size(batch.rows)
            names = list(batch.tasks[0].inputs)
            merged = {name: np.concatenate([np.asarray(task.inputs[name]) for task in batch.tasks]) for name in names}
            if padded > batch.rows:
                merged = {name: np.concatenate([value, np.repeat(value[:1], padded - batch.rows, axis=0)])
                          for name, value in merged.items()}
            if self._on_batch:
                self._on_batch(batch.model_name, batch.servable, batch.signature_name, padded,
                               [started - task.enqueued for task in batch.tasks])
            outputs = batch.servable.run(batch.signature_name, merged)
            start = 0
            for task in batch.tasks:
                task.outputs = {name: value[start:start + task.rows] for name, value in outputs.items()}
                start += task.rows
        except BaseException as error:  # every task of the batch gets the batch's error
            for task in batch.tasks:
                task.error = error
        finally:
            for task in batch.tasks:
                task.done.set()

    def stop(self):
        """Refuses new tasks, fails the queued ones and ends the threads."""
        with self._condition:
            self._stopped = True
            queued = [task for batches in self._queues.values() for batch in batches for task in batch.tasks]
            self._queues.clear()
            self._condition.notify_all()
        for task in queued:
            task.error = ServingError("The batch scheduler is shutting down", 503, "UNAVAILABLE")
            task.done.set()
