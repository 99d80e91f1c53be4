"""`deeplab serve` as a subprocess on a free 127.0.0.1 port, for the serving and preset tests."""
import contextlib
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def deeplab_serve(base_dir, model_name, log_path, *options, timeout=240, ready=None):
    """Yields (url, process) once the model's status answers (and `ready(status JSON)` holds, if given); stops
    the server on exit."""
    port = free_port()
    command = [sys.executable, "-m", "keras_deeplab.cli", "serve", "--model_name", model_name,
               "--model_base_path", str(base_dir), "--rest_api_port", str(port), *options]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"deeplab serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                response = httpx.get(f"{url}/v1/models/{model_name}", timeout=5)
                if response.status_code == 200 and (ready is None or ready(response.json())):
                    break
            except (httpx.TransportError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"deeplab serve not ready after {timeout} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
