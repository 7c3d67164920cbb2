"""The worker options are declared once (``WorkerConfig``); everything that takes them follows it."""

from __future__ import annotations

import inspect
import typing
from typing import Any

import attrs
import pytest

from nursery_worker import ConfigurationError, open_worker, run_supervisor
from nursery_worker._config import (
    DEFAULT_RETENTION,
    SupervisedOptions,
    WorkerConfig,
    WorkerOptions,
    options_doc,
    worker_options,
)
from nursery_worker._json import DEFAULT_MAX_RESULT_BYTES


def _accepted_type(field: attrs.Attribute[Any]) -> Any:
    """What a caller may pass for *field*: its converter's parameter type, else the field's own type."""
    if field.converter is not None:
        hints = typing.get_type_hints(field.converter)
        return next(hint for name, hint in hints.items() if name != "return")
    return typing.get_type_hints(WorkerConfig)[field.name]


def test_worker_options_has_one_key_per_config_field_with_the_type_it_accepts() -> None:
    """WorkerOptions names every WorkerConfig field, typed as the field (or its converter) accepts."""
    hints = typing.get_type_hints(WorkerOptions)

    assert set(hints) == {f.name for f in attrs.fields(WorkerConfig)}
    for field in attrs.fields(WorkerConfig):
        assert hints[field.name] == _accepted_type(field), field.name


def test_supervised_options_are_the_config_fields_marked_supervised() -> None:
    """SupervisedOptions (run_supervisor's worker options) holds exactly the fields marked supervised."""
    supervised = [f.name for f in attrs.fields(WorkerConfig) if f.metadata["supervised"]]

    assert set(typing.get_type_hints(SupervisedOptions)) == set(supervised)
    assert "once" not in supervised


def test_every_option_has_a_help_text() -> None:
    """Each option listed by worker_options() has a non-empty help sentence and its config default."""
    defaults = WorkerConfig()

    for option in worker_options():
        assert option.help.strip().endswith(".")
        assert option.default == getattr(defaults, option.name)


def test_the_docstrings_of_open_worker_and_run_supervisor_list_every_option_they_take() -> None:
    """open_worker's docstring documents every option, run_supervisor's every supervised one."""
    # Cleaned: Python 3.13+ strips the docstrings' common indentation at compile time, 3.11 and 3.12 keep it.
    worker_doc = inspect.cleandoc(open_worker.__doc__ or "")
    supervisor_doc = inspect.cleandoc(run_supervisor.__doc__ or "")
    for option in worker_options():
        assert f"\n    {option.name}: " in worker_doc
        documented = f"\n    {option.name}: " in supervisor_doc
        assert documented == option.supervised
    assert "{options}" not in (open_worker.__doc__ or "") + (run_supervisor.__doc__ or "")


def test_options_doc_shows_each_default_once() -> None:
    """options_doc renders the defaults from the declaration (retention in days, queues as None: the app's)."""
    doc = options_doc(indent=0, width=1000)

    assert "concurrency: the most jobs running at once. Default: ``10``." in doc
    assert "periodic schedules name (``App.queue_names()``). Default: ``None``." in doc
    assert "completed 1 day, discarded 7 days, cancelled 7 days" in doc
    assert DEFAULT_RETENTION["completed"] == 86400.0


def test_to_options_rebuilds_the_same_config() -> None:
    """A config serialized for a child (JSON-ready) rebuilds an equal config."""
    config = WorkerConfig(queues="a,b", concurrency=3, retention={"completed": 5}, sync_threads=2, log_args=True)

    options = config.to_options()

    assert options["queues"] == ["a", "b"]
    assert WorkerConfig(**options) == config


def test_a_config_of_the_apps_queues_rebuilds_as_none() -> None:
    """The default queues (every queue the app names) travel to a child as None and rebuild the same."""
    config = WorkerConfig()

    assert config.queues == () and config.to_options()["queues"] is None
    assert WorkerConfig(**config.to_options()) == config


@pytest.mark.parametrize(("where", "name"), [("open_worker", "concurency"), ("run_supervisor", "once")])
def test_an_option_the_caller_does_not_take_is_a_type_error_naming_it(where: str, name: str) -> None:
    """from_options refuses an unknown option (and once for the supervisor) as Python refuses a keyword."""
    with pytest.raises(TypeError, match=rf"{where}\(\) got an unexpected keyword argument '{name}'"):
        WorkerConfig.from_options(where, {name: 1})


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "100"])
def test_max_result_bytes_must_be_a_positive_int(value: object) -> None:
    """max_result_bytes refuses anything but an int >= 1, naming the option and the value."""
    with pytest.raises(ConfigurationError, match=rf"open_worker\(max_result_bytes={value!r}\): must be an int >= 1"):
        WorkerConfig(max_result_bytes=value)  # type: ignore[arg-type]


def test_max_result_bytes_defaults_to_the_json_modules_limit() -> None:
    """The worker's max_result_bytes defaults to DEFAULT_MAX_RESULT_BYTES (64 MiB) and reaches a child's config."""
    assert WorkerConfig().max_result_bytes == DEFAULT_MAX_RESULT_BYTES == 64 * 1024 * 1024
    assert WorkerConfig(**WorkerConfig(max_result_bytes=100).to_options()).max_result_bytes == 100


@pytest.mark.parametrize("value", [-1, -0.5, True, "60", None])
def test_idle_in_transaction_timeout_must_be_seconds_at_least_zero(value: object) -> None:
    """idle_in_transaction_timeout refuses anything but a number of seconds >= 0, naming the option and the value."""
    with pytest.raises(ConfigurationError, match=rf"open_worker\(idle_in_transaction_timeout={value!r}\): must be"):
        WorkerConfig(idle_in_transaction_timeout=value)  # type: ignore[arg-type]


def test_idle_in_transaction_timeout_defaults_to_a_minute_and_reaches_a_child() -> None:
    """The timeout defaults to 60 s, and a supervised child's config gets the value its parent was given."""
    assert WorkerConfig().idle_in_transaction_timeout == 60.0
    assert WorkerConfig(**WorkerConfig(idle_in_transaction_timeout=5).to_options()).idle_in_transaction_timeout == 5


def test_run_takes_the_idle_in_transaction_timeout_as_an_option_and_from_the_environment() -> None:
    """``run`` has ``--idle-in-transaction-timeout``, also read from ``$NURSERY_WORKER_IDLE_IN_TRANSACTION_TIMEOUT``."""
    from click.testing import CliRunner

    from nursery_worker._cli import cli

    result = CliRunner().invoke(cli, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "--idle-in-transaction-timeout" in result.output
    assert "NURSERY_WORKER_IDLE_IN_TRANSACTION_TIMEOUT" in result.output
