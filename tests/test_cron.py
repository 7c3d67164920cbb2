"""Cron expressions and their ticks, without a database: validation, time zones and DST changes."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from nursery_worker import ConfigurationError
from nursery_worker._cron import Cron, resolve_zone

UTC = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def ticks(cron: Cron, start: dt.datetime, n: int) -> list[dt.datetime]:
    it = cron.ticks_after(start)
    return [next(it).astimezone(dt.UTC) for _ in range(n)]


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("expression", ["61 * * * *", "* * * *", "every day", "0 0 * * FUNDAY", "*/0 * * * *", ""])
def test_an_invalid_expression_is_refused_naming_it_and_the_format(expression: str) -> None:
    """A malformed expression raises ConfigurationError quoting it and describing the five-field format."""
    with pytest.raises(ConfigurationError) as info:
        Cron(expression, UTC, where="@app.periodic on 'x'")
    message = str(info.value)
    assert repr(" ".join(expression.split())) in message and "@app.periodic on 'x'" in message
    assert "minute hour day-of-month month day-of-week" in message


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 0 31 2 *"])
def test_a_day_no_chosen_month_has_is_refused_as_never_firing(expression: str) -> None:
    """An expression whose day of the month exists in none of its months is refused as one that never fires."""
    with pytest.raises(ConfigurationError, match="never fires") as info:
        Cron(expression, UTC)
    assert repr(expression) in str(info.value)


def test_an_expression_without_a_match_in_fifty_years_is_refused() -> None:
    """A combination that parses but matches no time (the 1st and 21st that are also the last Monday) never fires."""
    with pytest.raises(ConfigurationError, match=r"never fires \(no matching time within 50 years\)"):
        Cron("* * */20 * 1L", UTC)


def test_a_non_string_expression_is_refused() -> None:
    """cron= must be a string."""
    with pytest.raises(ConfigurationError, match="must be a string"):
        Cron(5, UTC)  # type: ignore[arg-type]


def test_an_unknown_time_zone_is_refused_naming_it() -> None:
    """An unknown IANA name raises ConfigurationError naming it and an example of a valid one."""
    with pytest.raises(ConfigurationError, match=r"'Mars/Olympus' is not a known IANA time zone.*'Europe/Paris'"):
        resolve_zone("Mars/Olympus", where="x")


@pytest.mark.parametrize("value", [3600, dt.timezone(dt.timedelta(hours=2)), "../../etc/passwd"])
def test_a_time_zone_without_an_iana_name_is_refused(value: object) -> None:
    """A number, a fixed-offset tzinfo or a path is not a time zone name."""
    with pytest.raises(ConfigurationError, match="time zone"):
        resolve_zone(value, where="x")


def test_utc_and_zoneinfo_objects_are_accepted() -> None:
    """datetime.UTC and a ZoneInfo resolve to their IANA zone."""
    assert resolve_zone(dt.UTC, where="x").key == "UTC"
    assert resolve_zone(PARIS, where="x") is PARIS


def test_aliases_and_extra_whitespace_are_normalised() -> None:
    """@daily means '0 0 * * *', and runs of blanks in an expression collapse to one space."""
    assert ticks(Cron("@daily", UTC), utc(2026, 1, 1, 12), 1) == [utc(2026, 1, 2)]
    assert Cron("0   6 *  * *", UTC).expression == "0 6 * * *"


def test_a_six_field_expression_has_seconds_first() -> None:
    """'*/20 * * * * *' ticks every 20 seconds."""
    assert ticks(Cron("*/20 * * * * *", UTC), utc(2026, 1, 1, 0, 0, 5), 3) == [
        utc(2026, 1, 1, 0, 0, 20),
        utc(2026, 1, 1, 0, 0, 40),
        utc(2026, 1, 1, 0, 1, 0),
    ]


# --- ticks in a time zone ------------------------------------------------------------------------


def test_the_fields_are_read_in_the_schedules_time_zone() -> None:
    """'0 9 * * *' in Europe/Paris is 08:00 UTC in winter and 07:00 UTC in summer."""
    cron = Cron("0 9 * * *", PARIS)
    assert ticks(cron, utc(2026, 1, 10), 1) == [utc(2026, 1, 10, 8)]
    assert ticks(cron, utc(2026, 7, 10), 1) == [utc(2026, 7, 10, 7)]


def test_latest_at_or_before_includes_a_tick_at_that_very_instant() -> None:
    """The latest tick at or before a tick's own time is that tick; a microsecond earlier, the one before."""
    cron = Cron("*/5 * * * *", UTC)
    assert cron.latest_at_or_before(utc(2026, 1, 1, 10, 5)) == utc(2026, 1, 1, 10, 5)
    assert cron.latest_at_or_before(utc(2026, 1, 1, 10, 5) - dt.timedelta(microseconds=1)) == utc(2026, 1, 1, 10, 0)


# --- daylight-saving changes (Europe/Paris: 2026-03-29 02:00 -> 03:00, 2026-10-25 03:00 -> 02:00) --


def test_a_fixed_time_in_the_spring_gap_fires_once_when_the_gap_ends() -> None:
    """'30 2 * * *' fires at 03:00 CEST on the day 02:30 does not exist, then at 02:30 again."""
    cron = Cron("30 2 * * *", PARIS)
    assert ticks(cron, utc(2026, 3, 28, 12), 3) == [
        utc(2026, 3, 29, 1),  # 03:00 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
        utc(2026, 3, 31, 0, 30),
    ]


def test_a_fixed_time_in_the_autumn_overlap_fires_once_at_its_first_occurrence() -> None:
    """'30 2 * * *' fires once on the day 02:30 happens twice: at 02:30 summer time, not again an hour later."""
    cron = Cron("30 2 * * *", PARIS)
    assert ticks(cron, utc(2026, 10, 24, 12), 2) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST
        utc(2026, 10, 26, 1, 30),  # 02:30 CET, the next day
    ]


def test_an_hourly_expression_follows_real_time_across_the_spring_gap() -> None:
    """'0 * * * *' ticks every real hour: the skipped 02:00 has no tick."""
    cron = Cron("0 * * * *", PARIS)
    assert ticks(cron, utc(2026, 3, 28, 23, 30), 3) == [utc(2026, 3, 29, 0), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)]


def test_an_hourly_expression_fires_in_both_passes_of_the_repeated_hour() -> None:
    """'30 * * * *' fires at 02:30 CEST and at 02:30 CET: two instants an hour apart."""
    cron = Cron("30 * * * *", PARIS)
    assert ticks(cron, utc(2026, 10, 24, 23, 45), 3) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 1, 30),  # 02:30 CET
        utc(2026, 10, 25, 2, 30),  # 03:30 CET
    ]


def test_ticks_after_a_start_inside_the_repeated_hour_are_never_in_the_past() -> None:
    """From 02:10 CET (the second 02:10), the next '30 2 * * *' tick is tomorrow's, not today's past 02:30 CEST."""
    start = dt.datetime(2026, 10, 25, 2, 10, tzinfo=PARIS, fold=1)
    assert Cron("30 2 * * *", PARIS).next_after(start) == utc(2026, 10, 26, 1, 30)


def test_the_latest_tick_from_inside_the_repeated_hour_is_that_mornings() -> None:
    """At 02:10 CET the latest '30 2 * * *' tick is 02:30 CEST forty minutes earlier, not yesterday's."""
    end = dt.datetime(2026, 10, 25, 2, 10, tzinfo=PARIS, fold=1)
    assert Cron("30 2 * * *", PARIS).latest_at_or_before(end) == utc(2026, 10, 25, 0, 30)


def test_the_latest_tick_just_after_the_spring_gap_is_the_moved_one() -> None:
    """At 03:05 CEST on the spring-forward day, the latest '30 2 * * *' tick is 03:00 CEST (the moved 02:30)."""
    assert Cron("30 2 * * *", PARIS).latest_at_or_before(utc(2026, 3, 29, 1, 5)) == utc(2026, 3, 29, 1)


@pytest.mark.parametrize("zone", [PARIS, NEW_YORK, UTC])
@pytest.mark.parametrize("expression", ["30 2 * * *", "0 * * * *", "*/7 * * * *", "15 1-3 * * *", "0 */20 * * * *"])
def test_latest_and_next_tick_agree_around_every_dst_change(zone: ZoneInfo, expression: str) -> None:
    """For every minute across both 2026 DST changes, the latest tick is at or before it, the next one is
    after it, and no tick lies between them (the scheduler can neither skip nor repeat a tick)."""
    cron = Cron(expression, zone)
    for day in (utc(2026, 3, 7, 22), utc(2026, 3, 28, 22), utc(2026, 10, 24, 22), utc(2026, 10, 31, 22)):
        for minute in range(0, 8 * 60, 7):
            now = day + dt.timedelta(minutes=minute, seconds=13)
            latest, upcoming = cron.latest_at_or_before(now), cron.next_after(now)
            assert latest is not None and upcoming is not None
            assert latest <= now < upcoming
            assert cron.next_after(latest) == upcoming, (expression, zone, now)
