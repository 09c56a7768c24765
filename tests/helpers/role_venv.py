"""A fresh venv holding the wheel and exactly the distributions one role's requirements name (pyproject's
base dependencies plus some extras, with everything they require in turn), taken from this environment
without a download: a directory of links to those distributions' files, on the venv's path. A module
outside the closure (torch, for a Triton or client box) is not importable there at all."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "deepfake-serving"


def role_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """The base dependencies and those of ``extras``, the project's own extras expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found, todo, seen = [], [*project["dependencies"], *(f"{PROJECT}[{e}]" for e in extras)], set()
    while todo:
        requirement = Requirement(todo.pop())
        if canonicalize_name(requirement.name) != PROJECT:
            found.append(requirement)
            continue
        for extra in requirement.extras - seen:
            seen.add(extra)
            todo.extend(project["optional-dependencies"][extra])
    return found


def closure(requirements: list[Requirement]) -> set[str]:
    """The installed distributions ``requirements`` need, transitively (markers evaluated here)."""
    names: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in requirements]
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in names and not extras:
            continue
        names.add(name)
        for line in metadata.distribution(requirement.name).requires or []:
            needed = Requirement(line)
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append((needed, frozenset(needed.extras)))
    return names


def link_distributions(names: set[str], target: Path) -> None:
    """Links in ``target`` to every top-level file and package directory of the named distributions."""
    target.mkdir(parents=True)
    for name in names:
        distribution = metadata.distribution(name)
        site = Path(str(distribution.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in distribution.files or [] if not str(f).startswith("..")}
        for top in tops:
            if (site / top).exists() and not (target / top).exists():
                (target / top).symlink_to(site / top)


def role_venv(directory: Path, wheel: Path, extras: tuple[str, ...] = ()) -> Path:
    """A venv at ``directory`` with the wheel (no dependencies) and the role's closure on its path; its bin/."""
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True)
    python = directory / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    linked = directory / "role-site-packages"
    link_distributions(closure(role_requirements(extras)), linked)
    Path(site, "role.pth").write_text(f"{linked}\n")
    return directory / "bin"
