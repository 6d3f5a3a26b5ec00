"""A process that owns Open3D's offscreen renderer and draws scenes sent to it.

Filament aborts the interpreter when its renderer is destroyed at exit with materials still
referenced. Rendering here, in a child that leaves with ``os._exit`` (and is killed when its parent
exits), keeps the caller's process clean. Protocol: pickled ``(scene, size)`` requests on stdin,
pickled ``(ok, image or message)`` replies on the original stdout (Open3D's own prints go to stderr).
"""

from __future__ import annotations

import atexit
import functools
import os
import pickle
import subprocess
import sys
import threading

import numpy as np


class RenderServer:
    """Client side: one child process, started on first use, requests serialised by a lock."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bpnp.viz.render_server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._lock = threading.Lock()
        atexit.register(self.close)

    def render(self, scene, size: tuple[int, int]) -> np.ndarray:
        with self._lock:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Open3D render process exited with code {self._proc.returncode}")
            try:
                pickle.dump((scene, tuple(size)), self._proc.stdin)
                self._proc.stdin.flush()
                ok, payload = pickle.load(self._proc.stdout)
            except (EOFError, BrokenPipeError, pickle.UnpicklingError) as e:
                raise RuntimeError(f"Open3D render process failed ({e})") from e
        if not ok:
            raise RuntimeError(payload)
        return payload

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


@functools.cache
def server() -> RenderServer:
    return RenderServer()


def _serve() -> None:
    from bpnp.viz.render3d import render_open3d_here

    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # Open3D / Filament messages must not corrupt the reply stream
    requests = sys.stdin.buffer
    while True:
        try:
            scene, size = pickle.load(requests)
        except EOFError:
            break
        try:
            reply = (True, render_open3d_here(scene, size))
        except Exception as e:  # reported to the client, which falls back to another backend
            reply = (False, f"{type(e).__name__}: {e}")
        pickle.dump(reply, replies)
        replies.flush()
    os._exit(0)  # skip Filament's destructors


if __name__ == "__main__":
    _serve()
