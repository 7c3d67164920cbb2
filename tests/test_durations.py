"""The one duration parser every surface shares (CLI options, environment variables)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from nursery_worker._cli._types import DURATION, POSITIVE_DURATION
from nursery_worker._durations import format_duration_exact, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("2.5", 2.5),
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1w2d", 777600.0),
        ("250ms", 0.25),
        (" 1H30M ", 5400.0),
        ("1d 12h", 129600.0),
    ],
)
def test_parse_duration_reads_plain_and_compound_forms(text: str, seconds: float) -> None:
    """Bare seconds and compound unit forms, largest unit first, parse to seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "30m1h", "1h1h", "-5", "nan", "inf", "1x", "5m x", "h"])
def test_parse_duration_refuses_with_the_value_and_the_forms(text: str) -> None:
    """A non-duration raises ValueError naming the value and how to write one."""
    with pytest.raises(ValueError, match="is not a duration") as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


@given(st.integers(min_value=1, max_value=10**8))
def test_format_duration_exact_round_trips(seconds: int) -> None:
    """The exact formatter's output parses back to the same number of seconds."""
    assert parse_duration(format_duration_exact(seconds)) == seconds


def test_click_duration_types_name_the_option_on_bad_input() -> None:
    """The click types turn a bad duration into a usage error naming the option."""

    @click.command()
    @click.option("--every", type=POSITIVE_DURATION)
    @click.option("--age", type=DURATION)
    def cmd(every: float | None, age: float | None) -> None:
        click.echo(f"{every} {age}")

    runner = CliRunner()
    ok = runner.invoke(cmd, ["--every", "1m30s", "--age", "0"])
    assert ok.output.strip() == "90.0 0.0"
    bad = runner.invoke(cmd, ["--every", "0"])
    assert bad.exit_code == 2 and "--every" in bad.output and "more than 0" in bad.output
    bad = runner.invoke(cmd, ["--age", "soon"])
    assert bad.exit_code == 2 and "'soon' is not a duration" in bad.output
