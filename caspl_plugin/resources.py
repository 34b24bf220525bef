"""The experiment configs (``configs/``) and shell scripts (``scripts/``), from a source checkout or an
installed package, and copying them into a host project (``caspl configs``).

In a checkout they are the repository's top-level folders; an installed package carries a copy under
``caspl_plugin/bundled/`` (made by ``setup.py`` when the wheel is built). The checkout wins, so
editable installs always see the files being edited.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_write

_PACKAGE_DIR = Path(__file__).resolve().parent
#: where an installed package keeps its copy of configs/ and scripts/
BUNDLE_DIR = _PACKAGE_DIR / "bundled"
#: the repository root when running from a source checkout
CHECKOUT_DIR = _PACKAGE_DIR.parent
#: the shipped files, per top-level folder (setup.py bundles the same selection)
PATTERNS: dict[str, tuple[str, ...]] = {"configs": ("*.yaml",), "scripts": ("*.sh", "*.md")}


def _holds_resources(root: Path) -> bool:
    return (root / "configs" / "trainers").is_dir() and (root / "scripts" / "common.sh").is_file()


def resources_root() -> Path:
    """The folder holding ``configs/`` and ``scripts/``: the source checkout, else the installed copy."""
    checkout = CHECKOUT_DIR if (CHECKOUT_DIR / "setup.py").is_file() else None
    for root in (checkout, BUNDLE_DIR):
        if root is not None and _holds_resources(root):
            return root
    raise FileNotFoundError(
        f"caspl-plugin's configs and scripts are missing: looked in {BUNDLE_DIR} (installed package) and "
        f"{CHECKOUT_DIR} (source checkout). Reinstall the package from a wheel or sdist built by its setup.py."
    )


def configs_dir() -> Path:
    """The ``configs/`` folder (``datasets/``, ``trainers/<Trainer>/``, ``tiny/``)."""
    return resources_root() / "configs"


def scripts_dir() -> Path:
    """The ``scripts/`` folder (``common.sh``, ``zeroshot.sh``, ``caspl/``, ``methods/``)."""
    return resources_root() / "scripts"


def list_resources() -> list[Path]:
    """Every shipped file, relative to :func:`resources_root` (``configs/...yaml``, ``scripts/...sh``)."""
    root = resources_root()
    found = {
        path.relative_to(root)
        for folder, patterns in PATTERNS.items()
        for pattern in patterns
        for path in (root / folder).rglob(pattern)
        if path.is_file()
    }
    return sorted(found)


@dataclass
class CopyReport:
    """What :func:`copy_resources` did, as paths relative to the destination."""

    copied: list[Path] = field(default_factory=list)  # new files
    overwritten: list[Path] = field(default_factory=list)  # differing files replaced (force=True)
    unchanged: list[Path] = field(default_factory=list)  # already there with the same content
    skipped: list[Path] = field(default_factory=list)  # differing files left alone (force=False)


def _write_atomic(source: Path, target: Path) -> None:
    atomic_write(target, source.read_bytes(), mode=0o755 if target.suffix == ".sh" else 0o644)


def copy_resources(dest: str | os.PathLike, force: bool = False) -> CopyReport:
    """Copy ``configs/`` and ``scripts/`` into ``dest`` (a host project's root).

    Existing files with other content are left alone unless ``force``; shell scripts are made
    executable. Raises ``NotADirectoryError`` when ``dest`` exists and is not a directory.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"Destination {dest} is not a directory (expected a project root folder)")
    root = resources_root()
    if dest.resolve() == root.resolve():
        raise ValueError(f"Destination {dest} is where the configs and scripts already are")
    report = CopyReport()
    for relative in list_resources():
        source, target = root / relative, dest / relative
        if target.is_file() and target.read_bytes() == source.read_bytes():
            report.unchanged.append(relative)
            continue
        if target.exists() and not force:
            report.skipped.append(relative)
            continue
        (report.overwritten if target.exists() else report.copied).append(relative)
        _write_atomic(source, target)
    return report
