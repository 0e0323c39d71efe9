"""The worker's fault settings as configured: fast checks beside the process tests of test_worker_faults."""

from __future__ import annotations

import pytest
from kombu.connection import Connection
from pydantic import ValidationError

from ostinato.settings import LONGEST_COUNTDOWN_SECONDS, Settings
from ostinato.workers import transport
from ostinato.workers.celery_app import celery_config
from ostinato.workers.gate import hold_seconds


def defaults(**overrides: object) -> Settings:
    """Settings at their declared defaults (this test run's environment shortens some of them)."""
    names = ("visibility_timeout", "unacked_restore_interval", "task_time_limit")
    values = {name: Settings.model_fields[name].default for name in names}
    return Settings(**(values | overrides))


def test_defaults_recover_a_killed_worker_within_30_s_and_outlive_every_task() -> None:
    config = celery_config(defaults())
    options = config["broker_transport_options"]
    assert options["visibility_timeout"] + options["unacked_restore_interval"] == 22.0
    assert options["unacked_mutex_expire"] == 10
    assert (config["task_soft_time_limit"], config["task_time_limit"]) == (12.0, 15.0)
    assert max(config["task_time_limit"], LONGEST_COUNTDOWN_SECONDS) < options["visibility_timeout"]
    assert config["task_acks_on_timeout"] is False
    assert config["broker_connection_max_retries"] is None


def test_a_visibility_timeout_that_a_task_or_countdown_could_outlast_is_refused() -> None:
    with pytest.raises(ValidationError, match="visibility_timeout"):
        defaults(visibility_timeout=15.0)
    with pytest.raises(ValidationError, match="visibility_timeout"):
        defaults(visibility_timeout=10.0, task_time_limit=5.0)
    assert defaults(visibility_timeout=11.0, task_time_limit=8.0).visibility_timeout == 11.0


def test_redis_brokers_use_the_transport_whose_channels_close_without_redis() -> None:
    config = celery_config(defaults(broker_url="redis://127.0.0.1:6379/3"))
    assert config["broker_transport"] == transport.TRANSPORT
    connection = Connection(config["broker_url"], transport=config["broker_transport"])  # type: ignore[no-untyped-call]
    assert connection.transport.Channel is transport.Channel
    assert connection.as_uri() == "ostinato-redis://:**@127.0.0.1:6379/3"
    assert celery_config(defaults(broker_url="rediss://127.0.0.1:6380/0"))["broker_transport"] is None


def test_the_gate_holds_longer_for_each_trip_of_one_outage() -> None:
    assert [hold_seconds(trips) for trips in range(1, 9)] == [0, 1, 3, 7, 15, 31, 60, 60]
