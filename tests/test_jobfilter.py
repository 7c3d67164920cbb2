"""JobFilter: validated when built, narrowed per bulk action, described for people."""

from __future__ import annotations

import datetime as dt

import pytest

from nursery_worker import ConfigurationError, JobFilter, JobState, JobStateError


def test_an_unknown_state_is_refused_naming_it_and_the_valid_ones() -> None:
    """A misspelt state name is refused with the valid names listed."""
    with pytest.raises(ConfigurationError, match=r"'availabel' is not a job state; use one of pending, .*available"):
        JobFilter(states="availabel")


def test_a_reversed_id_range_is_refused_with_the_fix() -> None:
    """min_id above max_id is refused, suggesting the swapped range."""
    with pytest.raises(ConfigurationError, match="reversed; use min_id=100, max_id=200"):
        JobFilter(min_id=200, max_id=100)


def test_a_negative_age_and_a_bad_id_are_refused() -> None:
    """older_than below zero and a non-positive id are refused, naming the value."""
    with pytest.raises(ConfigurationError, match="older_than=-1"):
        JobFilter(older_than=-1)
    with pytest.raises(ConfigurationError, match="min_id=0"):
        JobFilter(min_id=0)


def test_a_bad_queue_name_is_refused() -> None:
    """A queue name with a space is refused by the queue-name check."""
    with pytest.raises(ConfigurationError, match="queue='no way'"):
        JobFilter(queue="no way")


def test_states_and_ages_are_normalised() -> None:
    """A state string becomes a tuple of JobState; a timedelta becomes seconds."""
    f = JobFilter(states="available", older_than=dt.timedelta(hours=1))
    assert (f.states, f.older_than) == ((JobState.AVAILABLE,), 3600.0)


def test_for_action_gives_each_action_its_default_states() -> None:
    """Without states, cancel takes the unfinished states, retry discarded and cancelled, delete all but executing."""
    assert JobFilter().for_action("retry").states == (JobState.DISCARDED, JobState.CANCELLED)
    assert JobState.EXECUTING in (JobFilter().for_action("cancel").states or ())
    assert JobState.EXECUTING not in (JobFilter().for_action("delete").states or ())


def test_for_action_refuses_a_state_the_action_cannot_take() -> None:
    """Deleting executing jobs is refused with the reason."""
    with pytest.raises(JobStateError, match="executing jobs cannot be deleted"):
        JobFilter(states=["cancelled", "executing"]).for_action("delete")


def test_describe_names_every_field_given() -> None:
    """describe() lists the fields for the CLI's preview line."""
    f = JobFilter(states="available", queue="emails", older_than=5400, min_id=100, max_id=200)
    assert f.describe() == "state available, queue emails, older than 1h30m, ids 100-200"
    assert JobFilter().describe() == "every job"
    assert JobFilter().is_empty and not f.is_empty
