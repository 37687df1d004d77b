"""A real OpenAI-compatible server on loopback: llama-cpp-python's, on the embedded
SmolLM2, for the tests of the OpenAI-compatible backend."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

SERVER_START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """The base URL (`http://127.0.0.1:PORT/v1`) of `python -m llama_cpp.server` serving
    SmolLM2-135M, started once per session and stopped at its end."""
    pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]")
    from llmflow.runtime.backends.base import BackendError
    from llmflow.runtime.backends.local import find_model_file

    try:
        model = find_model_file("smollm2-135m")
    except BackendError as error:
        pytest.skip(str(error))
    port = free_port()
    # The server loads its model as the embedded backend does: without repacked weights
    # (no_weight_repacking: they crash multi-token decodes on some AMX machines).
    serve = (
        "import runpy; from llmflow.runtime.backends.local.loading import no_weight_repacking\n"
        "with no_weight_repacking(): runpy.run_module('llama_cpp.server', run_name='__main__')"
    )
    command = [
        sys.executable, "-c", serve, "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
        "--n_threads", "1", "--verbose", "False",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(f"http://127.0.0.1:{port}/v1/models", process, log)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"llama_cpp.server exited:\n{log.read().decode(errors='replace')}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"llama_cpp.server did not answer {url} within {SERVER_START_TIMEOUT:g}s")
