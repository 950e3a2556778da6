"""Choosing a renderer and writing videos.

The choice is made before any environment is built: a live window where a display exists,
otherwise an off-screen context, EGL first and OSMesa second, each probed in a short subprocess
so that a failing driver cannot break this process. The choice is handed on through
``MUJOCO_GL`` and ``PYOPENGL_PLATFORM``, which Gymnasium's MuJoCo renderer reads when it creates
its context (so ``mujoco`` itself may already be imported) and PyOpenGL reads when it is first
imported (so it must not be yet, unless for the same platform). Users never need to set them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ppo_cli.files import atomic_path

OFFSCREEN_BACKENDS = ("egl", "osmesa")
VIDEO_SUFFIXES = (".mp4", ".gif")
SYSTEM_PACKAGES = "libegl1 libgl1 libegl-mesa0 (EGL) or libosmesa6 (OSMesa)"

_PROBE = "import mujoco; c = mujoco.GLContext(16, 16); c.make_current(); c.free()"


class RenderError(RuntimeError):
    """No renderer can be started, or a video cannot be written."""


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _backend_env(backend: str) -> dict[str, str]:
    return {"MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}


def probe_backend(backend: str) -> bool:
    """Whether an off-screen MuJoCo context of ``backend`` can be created (in a subprocess)."""
    env = {**os.environ, **_backend_env(backend)}
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=60,
                              start_new_session=True)  # a Ctrl-C stops ppo, not the probe
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def use_offscreen_backend() -> str:
    """Select an off-screen backend for this process (sets ``MUJOCO_GL``) and return its name.

    A ``MUJOCO_GL`` already set to ``egl`` or ``osmesa`` is kept (mujoco may already use it);
    otherwise EGL, then OSMesa, is probed.
    """
    current = os.environ.get("MUJOCO_GL", "").lower()
    candidates = (current,) if current in OFFSCREEN_BACKENDS else OFFSCREEN_BACKENDS
    if "OpenGL" in sys.modules:  # PyOpenGL fixed its platform when it was imported
        loaded = os.environ.get("PYOPENGL_PLATFORM", "").lower()
        candidates = tuple(c for c in candidates if c == loaded)
        if not candidates:
            raise RenderError(f"PyOpenGL was already loaded for platform {loaded or 'default'} in this process; "
                              f"start a new process (or set MUJOCO_GL=egl before starting)")
    for backend in candidates:
        if probe_backend(backend):
            os.environ.update(_backend_env(backend))
            return backend
    tried = ", ".join(candidates)
    raise RenderError(f"no off-screen renderer could be started (tried {tried}); install the Debian "
                      f"packages {SYSTEM_PACKAGES}, e.g. apt-get install libegl1 libgl1 libegl-mesa0")


def check_video_path(path: Path) -> None:
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise RenderError(f"{path} must end in {' or '.join(VIDEO_SUFFIXES)}")
    if not path.parent.is_dir():
        raise RenderError(f"folder {path.parent} does not exist")


class VideoWriter:
    """Collects RGB frames and writes an ``.mp4`` (ffmpeg) or ``.gif`` (Pillow) with imageio.

    ``fps`` may be left ``None`` for the caller to fill in (e.g. from the environment's metadata).
    """

    def __init__(self, path: Path, fps: float | None = None, max_frames: int | None = None) -> None:
        check_video_path(path)
        self.path = Path(path)
        self.fps = fps
        self.max_frames = max_frames
        self.frames: list[np.ndarray] = []

    @property
    def full(self) -> bool:
        return self.max_frames is not None and len(self.frames) >= self.max_frames

    def add(self, frame: np.ndarray | None) -> None:
        if frame is None:
            raise RenderError("the environment returned no frame; it does not support rgb_array rendering")
        if not self.full:
            self.frames.append(np.asarray(frame, dtype=np.uint8))

    def write(self) -> Path:
        """Write the collected frames to a temporary file, sync it and rename it into place."""
        import imageio.v3 as iio

        if not self.frames:
            raise RenderError("no frames were rendered")
        try:
            with atomic_path(self.path) as tmp:
                if self.path.suffix.lower() == ".gif":
                    iio.imwrite(tmp, np.stack(self.frames), duration=1000.0 / self.fps, loop=0)
                else:
                    iio.imwrite(tmp, np.stack(self.frames), fps=self.fps, codec="libx264",
                                macro_block_size=1, plugin="FFMPEG")
        except OSError as exc:
            raise RenderError(f"could not write {self.path}: {exc.strerror or exc}") from None
        except Exception as exc:  # imageio and ffmpeg report failures with many exception types
            raise RenderError(f"could not write {self.path}: {type(exc).__name__}: {exc}") from None
        return self.path
