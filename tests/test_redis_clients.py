"""How the Redis settings become clients and a broker address (no Redis needed)."""

import pytest
from pydantic import ValidationError

from api.enqueue import TaskMessages
from core.queue import make_celery
from core.redis_clients import broker_transport_options, broker_url, password, retries_spanning, secrets
from core.settings import Settings


def sentinel_settings(**overrides: object) -> Settings:
    return Settings(
        redis_url="redis://127.0.0.1:6379/3",
        redis_sentinels="s1:26379, s2:26380,[::1]:26381",
        **overrides,  # type: ignore[arg-type]
    )


def test_sentinels_are_a_comma_separated_list_of_host_port() -> None:
    settings = sentinel_settings()
    assert settings.redis_sentinels == ["s1:26379", "s2:26380", "[::1]:26381"]
    assert settings.sentinel_addresses() == [("s1", 26379), ("s2", 26380), ("::1", 26381)]


@pytest.mark.parametrize("bad", ["s1", "s1:port", ":26379"])
def test_a_sentinel_without_host_and_port_is_refused_naming_the_setting(bad: str) -> None:
    with pytest.raises(ValidationError, match="REDIS_SENTINELS"):
        Settings(redis_sentinels=bad)


def test_one_replica_must_confirm_writes_with_sentinels_none_without_unless_set() -> None:
    assert Settings().replicas_to_ack == 0
    assert sentinel_settings().replicas_to_ack == 1
    assert sentinel_settings(redis_min_replicas_acked=2).replicas_to_ack == 2
    assert Settings(redis_min_replicas_acked=1).replicas_to_ack == 1


def test_the_broker_goes_through_every_sentinel_to_the_named_primary_with_its_database_and_password() -> None:
    settings = sentinel_settings(redis_password="p@ss:word", redis_sentinel_password="guard")
    assert broker_url(settings) == (
        "sentinel://:p%40ss%3Aword@s1:26379/3;sentinel://:p%40ss%3Aword@s2:26380/3;"
        "sentinel://:p%40ss%3Aword@[::1]:26381/3"
    )
    options = broker_transport_options(settings)
    assert options["master_name"] == "dspy-jobs"
    assert options["sentinel_kwargs"]["password"] == "guard"
    assert options["ack_emulation"] is False


def test_without_sentinels_the_broker_is_redis_url_with_redis_password_when_set() -> None:
    assert broker_url(Settings(redis_url="redis://h:6379/1")) == "redis://h:6379/1"
    with_password = Settings(redis_url="redis://:old@h:6379/1", redis_password="new")
    assert broker_url(with_password) == "redis://:new@h:6379/1"
    assert "master_name" not in broker_transport_options(with_password)


def test_a_percent_encoded_password_in_redis_url_is_used_decoded_with_or_without_sentinels() -> None:
    """Regression: `redis://:p%40ss@h` sent `p%40ss` (and, through Sentinels, `p%2540ss`) as the password."""
    direct = Settings(redis_url="redis://:p%40ss%3Aword@h:6379/0")
    through_sentinels = Settings(redis_url="redis://:p%40ss%3Aword@h:6379/2", redis_sentinels="s1:26379")

    assert password(direct) == "p@ss:word" == password(through_sentinels)
    assert broker_url(through_sentinels).startswith("sentinel://:p%40ss%3Aword@")
    assert "p%40ss%3Aword" in secrets(direct) and "p@ss:word" in secrets(direct)


def test_both_passwords_are_masked_in_logs() -> None:
    assert sorted(secrets(sentinel_settings(redis_password="primary", redis_sentinel_password="guard"))) == [
        "guard",
        "primary",
    ]
    assert secrets(Settings(redis_url="redis://:from-url@h:6379/0")) == ["from-url"]


def test_flowers_task_sent_event_goes_to_the_database_the_sentinel_urls_name() -> None:
    message = TaskMessages(make_celery(sentinel_settings())).build("t", "job-a", ["job-a"], "interactive")
    assert message.event_channel == "/3.celeryev/task.sent"


@pytest.mark.parametrize("retry_s", [0.1, 1.0, 10.0, 30.0])
def test_a_workers_retries_span_at_least_the_time_it_was_asked_to_ride_out(retry_s: float) -> None:
    backoff, retries = retries_spanning(retry_s)
    slept = sum(backoff.compute(n) for n in range(1, retries + 1))
    assert slept >= retry_s
    assert slept - backoff.compute(retries) < retry_s  # and not one retry more
