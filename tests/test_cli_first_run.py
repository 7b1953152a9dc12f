"""The command line as a newcomer meets it: `--config` where it is typed, clear one-line errors
before any work, and exports that never leave an empty or partial file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from adapters.cli.main import main
from tests.test_audit import write_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, f"sqlite:///{tmp_path / 'e.sqlite'}")


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env or {"ENTITLEMENTS_CONFIG": ""})


@pytest.mark.parametrize(
    "args",
    [
        ("permissions", "u1", "--config", "{config}"),
        ("history", "u1", "--config", "{config}"),
        ("audit", "verify", "--config", "{config}", "{missing}"),
        ("--config", "{config}", "permissions", "u1"),
    ],
)
def test_config_is_accepted_before_or_after_any_command(
    config: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    filled = [a.format(config=config, missing=tmp_path / "nope.jsonl") for a in args]
    result = run(*filled)
    assert "No such option" not in result.output
    if args[0] == "audit":
        assert result.exit_code == 2 and "does not exist" in result.output
    else:
        assert result.exit_code in (0, 1), result.output


def test_serve_takes_config_after_the_command(config: Path) -> None:
    result = run("serve", "--config", str(config), "--help")
    assert result.exit_code == 0 and "--config" in result.output


def test_the_config_given_after_the_command_is_the_one_used(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[apps.demo\n")
    result = run("permissions", "u1", "--config", str(broken))
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_an_export_into_a_missing_folder_is_one_clear_error(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "folder" / "app.jsonl"
    result = run("--config", str(config), "audit", "export", "--out", str(out))
    assert result.exit_code == 1
    assert "no folder" in result.output and "Traceback" not in result.output


def test_a_failed_export_leaves_no_file_and_keeps_an_earlier_one(
    config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "customer.jsonl"
    args = ("--config", str(config), "audit", "export", "--customid", "nobody", "--out", str(out))
    assert run(*args).exit_code == 1
    assert not out.exists() and not list(tmp_path.glob(".*.partial"))
    out.write_text("an earlier export\n")
    assert run(*args).exit_code == 1
    assert out.read_text() == "an earlier export\n"


def test_rebuild_of_an_unknown_app_errs_before_any_progress_bar(config: Path) -> None:
    result = CliRunner().invoke(
        main, ["--config", str(config), "rebuild", "--app", "nosuchapp"]
    )
    assert result.exit_code == 1 and "unknown app 'nosuchapp'" in result.stderr
    assert "rebuild buyer_read_models" not in result.stderr  # the progress bar's label


@pytest.mark.parametrize("customid", ["", "   ", "a\x00b", "x" * 256])
def test_a_customid_the_api_refuses_is_refused_by_the_cli(config: Path, customid: str) -> None:
    for command in ("permissions", "history"):
        result = run("--config", str(config), command, customid)
        assert result.exit_code == 2 and "customid" in result.output.lower(), result.output


def test_permissions_and_history_agree_that_an_unknown_customid_has_no_customer(
    config: Path,
) -> None:
    runner = CliRunner()
    perms = runner.invoke(main, ["--config", str(config), "permissions", "stranger"])
    history = runner.invoke(main, ["--config", str(config), "history", "stranger"])
    assert history.exit_code == 1 and "no customer 'stranger'" in history.stderr
    # Answered as GET /v1/permissions answers (every permission never bought), and said so.
    assert perms.exit_code == 0 and "no customer 'stranger'" in perms.stderr
