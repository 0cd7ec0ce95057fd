"""What ``gistgym compare`` writes, for every task family: one folder, written whole.

``OUT/`` holds ``table.md`` (title, table, the family's further sections, verdict), ``results.csv``,
``results.json`` (``{"format": "gistgym-compare", "policies": ..., "verdict": ...}`` and the
family's further keys, e.g. ``settings`` and ``headroom``) and the family's plots. It
is written into a staging folder and renamed into place (:mod:`gistgym.staging`); ``--out``
is checked before any evaluation, and only a previous comparison is replaced, with
``--overwrite``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gistgym.staging import check_output, read_json_marker, write_output_folder
from gistgym.videos.dataset import json_text, nan_to_null

COMPARE_FORMAT = "gistgym-compare"
"""The format marker of a comparison's ``results.json`` (what ``--overwrite`` may replace)."""


def is_compare_output(folder: Path) -> bool:
    """Whether ``folder`` is a previous ``gistgym compare`` output (``results.json`` with its format marker).

    Outputs of earlier versions, without the marker, are recognised by ``results.json``
    holding exactly ``policies`` and ``verdict`` beside ``table.md``.
    """
    doc = read_json_marker(folder / "results.json")
    if doc is None:
        return False
    legacy = set(doc) == {"policies", "verdict"} and (folder / "table.md").is_file()
    return doc.get("format") == COMPARE_FORMAT or legacy


def check_compare_out(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check ``--out`` before any evaluation (see :func:`gistgym.staging.check_output`).

    Raises:
        OutputDirError: ``--out`` is a file, a foreign folder, or a previous comparison without ``--overwrite``.
    """
    marker = f"no results.json of format {COMPARE_FORMAT!r}"
    return check_output(out, overwrite=overwrite, is_ours=is_compare_output, what="a gistgym comparison", marker=marker)


def write_report(
    out: str | os.PathLike[str],
    *,
    title: str,
    table: str,
    verdict: str,
    csv: bytes,
    results: Mapping[str, Any],
    plots: Mapping[str, Callable[[Path], None]],
    sections: Sequence[str] = (),
) -> None:
    """table.md, results.csv, results.json and the plots, written into a staging folder renamed onto ``out``.

    table.md is the title, the table, each of ``sections`` (markdown blocks, e.g. per-setting
    summaries) and the verdict, separated by blank lines. In results.json a number that is
    missing (no run inside the span, a curve that does not reach a fraction, mAP without
    ground truth: NaN in ``results``) is ``null``.
    """
    body = "\n\n".join([title, table, *sections, verdict])
    files: dict[str, bytes | Callable[[Path], None]] = {
        "table.md": f"{body}\n".encode(),
        "results.csv": csv,
        "results.json": (json_text({"format": COMPARE_FORMAT, **nan_to_null(results)}, indent=1) + "\n").encode(),
        **plots,
    }
    write_output_folder(out, files)
