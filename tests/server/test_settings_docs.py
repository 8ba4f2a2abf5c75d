"""docs/settings.md lists exactly the flags `orthoserve serve` takes, with the defaults and help of `Settings`."""

from __future__ import annotations

import typer

from server.cli import app, settings_table
from server.settings import Settings
from server_process import REPO_ROOT


def test_every_setting_is_a_serve_flag_and_every_flag_a_setting() -> None:
    serve = typer.main.get_command(app).commands["serve"]
    assert {param.name for param in serve.params} == set(Settings.model_fields)


def test_settings_doc_holds_the_generated_table() -> None:
    doc = (REPO_ROOT / "docs" / "settings.md").read_text()
    table = settings_table()
    assert table in doc, (
        "docs/settings.md is out of date; replace its table with the output of\n"
        "  python -c 'from server.cli import settings_table; print(settings_table())'\n\n" + table
    )
