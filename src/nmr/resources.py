"""Where the package's data files are: share/nmr after an install, or the source checkout.

`colcon build` installs config/, models/, launch/ and rviz/ to share/nmr (setup.py data_files) while the
Python code lands in lib/pythonX.Y/site-packages, so a path relative to a module's own file only works in
a source checkout. Every lookup of a shipped file goes through here.
"""

from __future__ import annotations

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]  # src/nmr/resources.py -> the repository root


def share_dirs() -> list[Path]:
    """Folders that may hold nmr's data files, installed share/nmr first, then the source checkout."""
    dirs: list[Path] = []
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory('nmr')))
    except Exception:  # no ament index (plain venv), or nmr not installed in it
        pass
    if (_CHECKOUT / 'package.xml').is_file():
        dirs.append(_CHECKOUT)
    return dirs


def share_path(*parts: str) -> Path:
    """The first existing `<share dir>/<parts>`; if none exists, where it is expected first (for messages)."""
    dirs = share_dirs() or [_CHECKOUT]
    for folder in dirs:
        candidate = folder.joinpath(*parts)
        if candidate.exists():
            return candidate
    return dirs[0].joinpath(*parts)
