"""Rows of figures beside their floors, the printed table, the JSON file, the machine."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path


@dataclass
class Row:
    workload: str
    backend: str
    figure: str
    value: float | None  # None: not measured (e.g. route not available)
    floor: str
    floor_value: float | None
    higher_is_better: bool = True
    bar: str = ""
    meets: bool | None = None
    note: str = ""
    detail: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.floor_value:
            return None
        return self.value / self.floor_value

    def as_dict(self) -> dict:
        ratio = self.ratio
        return {**asdict(self), "ratio": None if ratio is None else round(ratio, 3)}


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def table(rows: list[Row]) -> str:
    head = ["workload", "backend", "figure", "value", "floor", "floor value", "ratio", "bar", "met"]
    lines = [head]
    for r in rows:
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}x"
        met = {True: "yes", False: "NO", None: ""}[r.meets]
        lines.append(
            [
                r.workload,
                r.backend,
                r.figure,
                _num(r.value),
                r.floor,
                _num(r.floor_value),
                ratio,
                r.bar,
                met + (f" {r.note}" if r.note else ""),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def markdown_table(rows: list[Row]) -> str:
    out = [
        "| workload | backend | figure | value | floor | floor value | ratio | bar | met |",
        "|---|---|---|---:|---|---:|---:|---|---|",
    ]
    for r in rows:
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}x"
        met = {True: "yes", False: "**no**", None: ""}[r.meets]
        out.append(
            f"| {r.workload} | {r.backend} | {r.figure} | {_num(r.value)} | {r.floor} | "
            f"{_num(r.floor_value)} | {ratio} | {r.bar} | {met} {r.note} |".rstrip()
        )
    return "\n".join(out)


def machine_info() -> dict:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "memory_gib": round(_meminfo_kib("MemTotal") / 2**20, 1),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {
            p: _version(p)
            for p in ("uvicorn", "uvloop", "starlette", "eventsourcing", "stripe", "psycopg")
        },
        "wrk": _wrk_version(),
        "engine_commit": _git("rev-parse", "HEAD"),
        "engine_uncommitted_changes": bool(
            _git("status", "--porcelain", "--", "adapters", "domain", "projections")
        ),
    }


def _git(*args: str) -> str:
    """Read-only git queries about the code measured."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    except FileNotFoundError:
        return ""
    return out.stdout.strip()


def _meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _wrk_version() -> str | None:
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return None
    return out.splitlines()[0] if out else None


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
