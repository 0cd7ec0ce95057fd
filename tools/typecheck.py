"""``make typecheck``: mypy over the installed layout of the package.

``pyproject.toml`` maps the top-level folders (``agents/``, ``envs/``, ...) to ``gistgym.agents``,
``gistgym.envs``, ... with ``[tool.setuptools.package-dir]``. An editable install serves that
mapping with an import hook, which mypy cannot follow, so this builds a throwaway view of the
installed layout (``build/typecheck/gistgym/``, hard links to the source files), runs mypy on it,
and reports every path as the source file's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VIEW = ROOT / "build" / "typecheck"


def package_dir(pyproject: Path) -> dict[str, str]:
    """``[tool.setuptools.package-dir]`` of ``pyproject`` (read without tomllib, which Python 3.10 lacks)."""
    text = pyproject.read_text()
    section = text.split("[tool.setuptools.package-dir]", 1)[1].split("\n[", 1)[0]
    pairs = re.findall(r'^\s*"?([\w.]+)"?\s*=\s*"([^"]+)"', section, flags=re.MULTILINE)
    if not pairs:
        raise SystemExit(f"{pyproject}: no [tool.setuptools.package-dir] entries")
    return dict(pairs)


def build_view() -> dict[str, str]:
    """Link the package-dir mapping under :data:`VIEW`; returns view prefix -> source prefix."""
    mapping = package_dir(ROOT / "pyproject.toml")
    shutil.rmtree(VIEW, ignore_errors=True)
    prefixes = {}
    for package, folder in sorted(mapping.items()):  # parents before children
        target = VIEW.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted((ROOT / folder).glob("*.py")) + sorted((ROOT / folder).glob("*.typed")):
            try:  # a hard link (mypy resolves symlinks to the source path, and so the wrong module)
                os.link(src, target / src.name)
            except OSError:
                shutil.copy2(src, target / src.name)
        prefixes[f"{target.relative_to(ROOT)}{os.sep}"] = f"{folder}{os.sep}"
    return prefixes


def main() -> int:
    """Build the view, run mypy on it (extra arguments passed on), print its report with source paths."""
    prefixes = build_view()
    out = subprocess.run([sys.executable, "-m", "mypy", str(VIEW.relative_to(ROOT) / "gistgym"), *sys.argv[1:]],
                         cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    for line in (out.stdout + out.stderr).splitlines():
        for view, source in sorted(prefixes.items(), key=lambda kv: -len(kv[0])):
            if line.startswith(view):
                line = source + line[len(view) :]
                break
        print(line)
    return out.returncode


if __name__ == "__main__":
    sys.exit(main())
