"""The reaper's view of how far workers have taken a queue, on an injected clock, and which messages kombu
still holds: read from messages the API wrote, through the one module that knows kombu's layout
(core/kombu_wire.py)."""

import json

from api.enqueue import TaskMessages
from core.kombu_wire import unacked_task_ids
from core.queue import RUN_JOB_TASK, make_celery
from core.settings import Settings
from worker.reaper import TakenMarks, marking_job

LOST_AFTER_S = 10.0


def envelope(job_id: str, task: str = RUN_JOB_TASK) -> str:
    return TaskMessages(make_celery(Settings())).build(task, job_id, [job_id], "interactive").message


def test_no_mark_holds_until_one_is_lost_after_s_old() -> None:
    marks = TakenMarks(LOST_AFTER_S)

    assert marks.note(100.0, 95.0) is None
    assert marks.note(109.9, 96.0) is None
    assert marks.note(110.0, 97.0) == 95.0


def test_the_highest_old_enough_mark_holds_and_never_goes_back() -> None:
    marks = TakenMarks(LOST_AFTER_S)
    marks.note(100.0, 95.0)
    marks.note(101.0, 99.0)
    marks.note(102.0, 90.0)  # an older job came next in line (a re-send): it cannot undo a mark

    assert marks.note(112.0, None) == 99.0
    assert marks.note(200.0, None) == 99.0


def test_a_pass_that_gives_no_mark_leaves_the_earlier_ones_in_force() -> None:
    marks = TakenMarks(LOST_AFTER_S)
    marks.note(100.0, 95.0)

    assert marks.note(105.0, None) is None
    assert marks.note(111.0, None) == 95.0


def test_a_job_message_next_in_line_marks_the_queue() -> None:
    assert marking_job(envelope("job-1")) == "job-1"


def test_a_delayed_retry_another_task_or_junk_marks_nothing() -> None:
    delayed = json.loads(envelope("job-2"))
    delayed["headers"]["eta"] = "2026-12-01T12:00:00+00:00"

    assert marking_job(json.dumps(delayed)) is None
    assert marking_job(envelope("job-3", task="other.task")) is None
    assert marking_job("not json") is None
    assert marking_job('{"headers": "no dict"}') is None


def test_held_messages_are_matched_by_id_not_by_substring() -> None:
    # kombu's `unacked` hash: delivery tag -> [envelope, exchange, routing key].
    unacked = [json.dumps([json.loads(envelope(job_id)), "", "interactive"]) for job_id in ("B-12", "C-1")]

    held = unacked_task_ids([*unacked, "junk", "[]"])

    assert held == {"B-12", "C-1"}
    assert "B-1" not in held
