"""When the event hub pings itself and when it decides it is deaf (api/event_hub.py), on a clock we move."""

from api.event_hub import Liveness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_hub_that_hears_messages_never_pings() -> None:
    clock = Clock()
    liveness = Liveness(quiet_s=3, clock=clock)
    for _ in range(10):
        clock.now += 1
        liveness.heard()
        assert liveness.ping_due() is None
        assert not liveness.deaf()


def test_a_quiet_hub_pings_once_and_an_answered_ping_keeps_it_alive() -> None:
    clock = Clock()
    liveness = Liveness(quiet_s=3, clock=clock)
    clock.now += 3
    nonce = liveness.ping_due()
    assert nonce is not None
    assert liveness.ping_due() is None  # one ping out at a time
    clock.now += 1
    liveness.heard()
    liveness.answered(nonce)
    clock.now += 2.9
    assert not liveness.deaf()


def test_an_unanswered_ping_makes_the_hub_deaf_once_then_it_starts_afresh() -> None:
    clock = Clock()
    liveness = Liveness(quiet_s=3, clock=clock)
    clock.now += 3
    nonce = liveness.ping_due()
    assert nonce is not None
    liveness.answered("someone else's ping")
    clock.now += 2.9
    assert not liveness.deaf()
    clock.now += 0.1
    assert liveness.deaf()
    assert not liveness.deaf()
    assert liveness.ping_due() is None  # quiet again only 3 s from now
    clock.now += 3
    assert liveness.ping_due() is not None
