"""The one check of the house rule for bad input: exit code 2, one ``error:`` line, no traceback."""

from __future__ import annotations


def one_line_error(result, *needles: str) -> str:
    """Assert ``result`` (a typer ``CliRunner`` result) failed with exit 2 and exactly one ``error:`` line
    holding every needle, and no traceback; return that line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]
