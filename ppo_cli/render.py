"""Choosing a renderer and writing videos.

MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` when ``mujoco`` is first imported, so the choice
is made before any environment is built: a live window where a display exists, otherwise an
off-screen context, EGL first and OSMesa second, each probed in a short subprocess so that a
failing driver cannot break this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

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
        done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def use_offscreen_backend() -> str:
    """Select an off-screen backend for this process (sets ``MUJOCO_GL``) and return its name.

    A ``MUJOCO_GL`` already set to ``egl`` or ``osmesa`` is kept (mujoco may already use it);
    otherwise EGL, then OSMesa, is probed.
    """
    current = os.environ.get("MUJOCO_GL", "").lower()
    if current in OFFSCREEN_BACKENDS:
        candidates = (current,)
    elif "mujoco" in sys.modules:
        raise RenderError(f"mujoco was already imported with MUJOCO_GL={current or 'unset'}; "
                          f"set MUJOCO_GL=egl (or osmesa) before starting")
    else:
        candidates = OFFSCREEN_BACKENDS
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
        """Write the collected frames to a temporary file, then rename it into place."""
        import imageio.v3 as iio

        if not self.frames:
            raise RenderError("no frames were rendered")
        tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        try:
            if self.path.suffix.lower() == ".gif":
                iio.imwrite(tmp, np.stack(self.frames), duration=1000.0 / self.fps, loop=0)
            else:
                iio.imwrite(tmp, np.stack(self.frames), fps=self.fps, codec="libx264",
                            macro_block_size=1, plugin="FFMPEG")
            os.replace(tmp, self.path)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise RenderError(f"could not write {self.path}: {type(exc).__name__}: {exc}") from exc
        return self.path
