"""The ``leukdx data inspect`` report: what each source holds and what looks wrong.

One row per source: layout, images per class, file formats, pixel sizes, exact, near and
re-crop duplicate pairs, groups, and problems (unreadable files, one class only, duplicates shared with
other sources, groups holding both labels). Unreadable files are reported rather than fatal
here (the report forces ``data.on_bad_image: skip``).

Example:
    >>> df = inspect_collection("../shared/data")
    >>> print(format_inspect_table(df))
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd

from leukdx.config import DataConfig
from leukdx.data.dedup import duplicate_pairs, mixed_label_groups
from leukdx.data.records import DataWarning, load_collection, with_config

__all__ = ["INSPECT_COLUMNS", "format_inspect_table", "inspect_collection"]

INSPECT_COLUMNS: tuple[str, ...] = (
    "source",
    "layout",
    "n_healthy",
    "n_leukemia",
    "n_total",
    "formats",
    "min_width",
    "max_width",
    "min_height",
    "max_height",
    "exact_duplicate_pairs",
    "near_duplicate_pairs",
    "recrop_pairs",
    "groups",
    "problems",
)


def _formats(fmts: pd.Series) -> str:
    counts = Counter(fmts.astype(str))
    return " ".join(f"{fmt}:{n}" for fmt, n in sorted(counts.items()))


def inspect_collection(
    root: str | os.PathLike,
    data_config: DataConfig | None = None,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Per-source summary of a collection.

    Args:
        root: a collection folder or a single source folder.
        data_config: as for :func:`leukdx.data.records.load_collection` (its ``on_bad_image``
            is replaced by ``skip`` so unreadable files are listed instead of stopping).
        progress: progress bar while scanning.

    Returns:
        DataFrame with columns :data:`INSPECT_COLUMNS`, one row per source, sorted by source.
        ``*_duplicate_pairs`` and ``recrop_pairs`` count pairs with at least one image in the
        source (near pairs exclude exact ones; re-crops are pairs found only by content
        matching, see :func:`leukdx.data.dedup.recrop_pairs`); ``problems`` is
        ``"; "``-separated text, empty when none. ``table.attrs["pairs"]`` holds every pair
        (:func:`leukdx.data.dedup.duplicate_pairs`), which :func:`format_inspect_table` lists.
    """
    config = with_config(data_config, on_bad_image="skip")
    with warnings.catch_warnings():
        # every warning's content ends up in the problems column
        warnings.simplefilter("ignore", DataWarning)
        coll = load_collection(root, config, progress=progress)
    records = coll.records
    pairs = duplicate_pairs(
        records,
        config.near_duplicate_distance,
        recrop_similarity=config.recrop_similarity,
        cache_dir=config.cache_dir or None,
        workers=config.workers,
    )
    mixed = set(mixed_label_groups(records))

    skipped_by_source: dict[str, list[str]] = {}
    for path, reason in coll.skipped:
        source = _source_of(path, coll.root, coll.layouts, config)
        skipped_by_source.setdefault(source, []).append(f"{Path(path).name} ({reason})")

    rows = []
    for source in sorted(set(coll.layouts) | set(records["source"])):
        part = records[records["source"] == source]
        in_source = (pairs["source_a"] == source) | (pairs["source_b"] == source)
        mine = pairs[in_source]
        problems: list[str] = []
        if source in skipped_by_source:
            items = skipped_by_source[source]
            problems.append(f"{len(items)} unreadable file(s) skipped: {', '.join(items)}")
        labels = set(part["label"].tolist())
        if labels == {0}:
            problems.append("healthy images only (usable for training or pooled testing)")
        elif labels == {1}:
            problems.append("leukaemia images only (usable for training or pooled testing)")
        cross = mine[mine["source_a"] != mine["source_b"]]
        if len(cross):
            others = sorted((set(cross["source_a"]) | set(cross["source_b"])) - {source})
            problems.append(f"{len(cross)} duplicate pair(s) shared with {', '.join(others)}")
        n_mixed = len(mixed & set(part["group"]))
        if n_mixed:
            problems.append(f"{n_mixed} group(s) hold both labels")
        rows.append(
            {
                "source": source,
                "layout": coll.layouts.get(source, ""),
                "n_healthy": int((part["label"] == 0).sum()),
                "n_leukemia": int((part["label"] == 1).sum()),
                "n_total": len(part),
                "formats": _formats(part["format"]),
                "min_width": int(part["width"].min()) if len(part) else 0,
                "max_width": int(part["width"].max()) if len(part) else 0,
                "min_height": int(part["height"].min()) if len(part) else 0,
                "max_height": int(part["height"].max()) if len(part) else 0,
                "exact_duplicate_pairs": int((mine["kind"] == "exact").sum()),
                "near_duplicate_pairs": int((mine["kind"] == "near").sum()),
                "recrop_pairs": int((mine["kind"] == "recrop").sum()),
                "groups": int(part["group"].nunique()),
                "problems": "; ".join(problems),
            }
        )
    table = pd.DataFrame(rows, columns=list(INSPECT_COLUMNS))
    # groups may span sources, so the collection total is not the column sum
    table.attrs["total_groups"] = int(records["group"].nunique())
    table.attrs["pairs"] = pairs
    return table


def _source_of(path: str, root: Path, layouts: dict[str, str], config: DataConfig) -> str:
    """Source of a skipped file: the first folder below the collection root (after merging)."""
    if len(layouts) == 1 and root.name in layouts:
        return root.name
    try:
        first = Path(path).relative_to(root).parts[0]
    except (ValueError, IndexError):
        return root.name
    for target, members in config.merge_sources.items():
        if first in members:
            return target
    return first


def _short(path: str) -> str:
    p = Path(str(path))
    return f"{p.parent.parent.name}/{p.parent.name}/{p.name}" if p.parent.name else p.name


def _range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def format_inspect_table(df: pd.DataFrame) -> str:
    """Fixed-width text of an :func:`inspect_collection` table, with a total line.

    Problems are listed under the table, one line per source, so the columns stay narrow.
    """
    headers = [
        "source",
        "layout",
        "healthy",
        "leukemia",
        "total",
        "formats",
        "width",
        "height",
        "exact",
        "near",
        "re-crop",
        "groups",
    ]
    right = {"healthy", "leukemia", "total", "exact", "near", "re-crop", "groups"}
    body = [
        [
            str(r.source),
            str(r.layout),
            str(r.n_healthy),
            str(r.n_leukemia),
            str(r.n_total),
            str(r.formats),
            _range(r.min_width, r.max_width),
            _range(r.min_height, r.max_height),
            str(r.exact_duplicate_pairs),
            str(r.near_duplicate_pairs),
            str(r.recrop_pairs),
            str(r.groups),
        ]
        for r in df.itertuples(index=False)
    ]
    total = [
        "TOTAL",
        "",
        str(int(df["n_healthy"].sum())),
        str(int(df["n_leukemia"].sum())),
        str(int(df["n_total"].sum())),
        "",
        "",
        "",
        "",
        "",
        "",
        str(int(df.attrs.get("total_groups", df["groups"].sum()))),
    ]
    table = [headers, *body, total]
    widths = [max(len(row[c]) for row in table) for c in range(len(headers))]

    def line(row: list[str]) -> str:
        cells = [
            cell.rjust(w) if headers[c] in right else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(headers), rule, *(line(r) for r in body), rule, line(total)]
    problems = [(r.source, r.problems) for r in df.itertuples(index=False) if r.problems]
    if problems:
        out.append("")
        out.append("Problems:")
        out.extend(f"  {source}: {text}" for source, text in problems)
    pairs = df.attrs.get("pairs")
    if pairs is not None and len(pairs):
        out.append("")
        out.append("Duplicate pairs (kept in one group):")
        out.extend(
            f"  {p.kind:<6}  {_short(p.path_a)}  {_short(p.path_b)}"
            + (f"  (dHash {p.distance} bits apart)" if p.kind != "exact" else "")
            for p in pairs.itertuples(index=False)
        )
    out.append("")
    out.append(
        "exact: identical files; near: dHash (16x16) within data.near_duplicate_distance; "
        "re-crop: shifted crops of one picture (data.recrop_similarity); "
        "groups: units a split never cuts."
    )
    return "\n".join(out)
