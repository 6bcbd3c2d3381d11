"""Where a result came from: model, weights, data, seed, versions and git commit.

Every run that writes results also writes this record beside them, so a reader can tell
exactly what produced a number and re-run it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: What a run's numbers depend on: the model's numerics, the atlas layout (UMAP runs on
#: numba/llvmlite, pynndescent, scikit-learn, scipy), decoding and tables.
PACKAGES = (
    "patchfinder", "tensorflow", "keras", "numpy", "umap-learn", "numba", "llvmlite",
    "pynndescent", "scikit-learn", "scipy", "pillow", "pandas",
)  # fmt: skip


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of `names` ("not installed" where missing)."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_commit(folder: Path | None = None) -> str:
    """The commit of the source tree patchfinder runs from, with `-dirty` when it has
    uncommitted changes; "unknown" outside a git checkout. An installed copy (`pip install
    .`) is no checkout: then a patchfinder clone in the working folder is asked instead."""
    if folder is None:
        folder = Path(__file__).resolve().parent
        clone = Path.cwd()
        if (
            not (folder.parent / ".git").exists()
            and (clone / "patchfinder" / "__init__.py").is_file()
        ):
            folder = clone
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else `platform.processor()`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _numba_cpu_name() -> str:
    """The CPU numba compiles the layout for: what it read when imported (the atlas makes it
    "generic"), else what it would read now; "host" is numba's own default."""
    numba = sys.modules.get("numba")
    name = numba.config.CPU_NAME if numba is not None else os.environ.get("NUMBA_CPU_NAME")
    return name or "host"


def provenance(**details: object) -> dict[str, object]:
    """A JSON-ready record: the caller's `details` (model, weights, data, seed, ...) plus the
    environment (versions, git commit, Python, platform, UTC time). A detail the caller
    recorded itself wins: a long run records `git_commit` when it starts, since the tree
    may change before it ends."""
    environment = {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "numba_cpu_name": _numba_cpu_name(),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return {**details, **{k: v for k, v in environment.items() if k not in details}}
