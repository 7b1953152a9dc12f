"""Replaying recorded Stripe events (files as Stripe sent them) into an app's history."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from adapters.ingest import Ingestor, Outcome, Webhook
from adapters.stripe.envelope import NotAStripeEvent, parse_event


def event_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files += sorted(path.rglob("*.json")) if path.is_dir() else [path]
    return files


def replay_file(ingestor: Ingestor, app_id: str, path: Path) -> Outcome | str:
    """The outcome, or the reason the file was rejected."""
    try:
        raw = path.read_text(encoding="utf-8")
        envelope, _ = parse_event(raw)
    except (OSError, UnicodeDecodeError) as error:
        return f"unreadable: {error}"
    except json.JSONDecodeError as error:
        return f"malformed JSON: {error.msg}"
    except NotAStripeEvent as error:
        return f"not a Stripe event: {error}"
    return ingestor.record(Webhook(app_id, envelope, raw, source="replay"))


@dataclass
class ReplaySummary:
    recorded: int = 0
    duplicate: int = 0
    rejected: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, path: Path, result: Outcome | str) -> None:
        if result is Outcome.RECORDED:
            self.recorded += 1
        elif result is Outcome.DUPLICATE:
            self.duplicate += 1
        else:
            self.rejected.append((path, str(result)))

    def render(self) -> str:
        lines = [
            f"recorded {self.recorded}, duplicate {self.duplicate}, rejected {len(self.rejected)}"
        ]
        lines += [f"  rejected {path}: {reason}" for path, reason in self.rejected]
        return "\n".join(lines)
