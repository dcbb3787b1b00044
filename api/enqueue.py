"""Enqueueing tasks: a job's message written with its record, in one step.

`celery.send_task` cost `POST /jobs` a fifth of the API's CPU (py-spy): a
hop to a thread (kombu is synchronous), a Redis round trip for the message
and another for Flower's `task-sent` event, each through a freshly built
Redis client. A job's message is small and fixed, so the API builds it
itself: the headers, properties and body come from Celery's own
`amqp.create_task_message` (protocol 2, exactly what `send_task` sends),
wrapped the way kombu's Redis transport stores a message (core/kombu_wire.py,
which the reaper reads them with), and LPUSHed onto the queue's list by the same
Lua script that stores the job's record and its `queued` event
(api/job_store.py), followed by the `task-sent` event on kombu's fanout
channel for Flower. Record and message are stored together or not at all.
`tests/test_enqueue.py` checks the message against the one `send_task`
writes, and real workers consume it in every test.

It relies on how kombu's Redis transport lays out messages: a queue is a
list named after it (priority 0), a direct exchange with the queue's name as
routing key is the anonymous exchange, and fanout messages are published on
`/<db>.<exchange>/<routing key>`. Those are kombu's storage format, which
workers of other versions must read too, so they change rarely; the test
above notices if they do. It writes no key prefix and no priority, so an
app configured with kombu's `global_keyprefix` or with message priorities
is refused when the API starts (`TaskMessages` raises) instead of
enqueueing where no worker listens.

Batch items travel as no message at all: bulk workers pick them
(worker/bulk.py).
"""

import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from celery import Celery
from celery.utils.nodenames import anon_nodename
from celery.utils.time import utcoffset

from core import kombu_wire

log = logging.getLogger(__name__)

_EVENT_EXCHANGE = "celeryev"


@dataclass(frozen=True)
class TaskMessage:
    queue: str  # the Redis list the message goes onto
    message: str  # kombu's envelope, JSON
    event_channel: str  # Flower's `task-sent` event: channel and envelope, or "" when events are off
    event: str


class TaskMessages:
    """Builds the Redis writes that enqueue a task, as Celery and kombu would make them."""

    def __init__(self, celery: Celery) -> None:
        self._celery = celery
        self._conf = celery.conf
        refuse_what_the_messages_cannot_honour(celery)
        self._hostname = anon_nodename()
        self._pid = os.getpid()
        # A Sentinel broker lists one URL per Sentinel, `;`-separated, each naming the database.
        first_url = str(self._conf.broker_url).split(";", 1)[0]
        db = (urlparse(first_url).path or "/0").lstrip("/") or "0"
        # kombu's Redis transport: fanout_prefix and fanout_patterns, both on by default.
        self._event_channel = kombu_wire.fanout_channel(db, _EVENT_EXCHANGE, "task.sent")

    def build(self, task: str, task_id: str, args: list[Any], queue: str) -> TaskMessage:
        sent_event = bool(self._conf.task_send_sent_event)
        headers, properties, body, event_fields = self._celery.amqp.create_task_message(
            task_id,
            task,
            args,
            {},
            reply_to=self._celery.thread_oid,
            create_sent_event=sent_event,
            ignore_result=None,
        )
        # Anonymous exchange: the routing key names the queue (as send_task does for a direct exchange).
        properties |= {"delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0}
        message = kombu_wire.envelope(self._conf.task_serializer, body, headers, properties)
        if not sent_event:
            return TaskMessage(queue, message, "", "")
        event = {
            "hostname": self._hostname,
            "utcoffset": utcoffset(),
            "pid": self._pid,
            "clock": self._celery.clock.forward(),
            **event_fields,
            "queue": queue,
            "exchange": "",
            "routing_key": queue,
            "timestamp": time.time(),
            "type": "task-sent",
        }
        event_properties = {
            "delivery_mode": 1,
            "delivery_info": {"exchange": _EVENT_EXCHANGE, "routing_key": "task.sent"},
            "priority": 0,
        }
        envelope = kombu_wire.envelope(
            self._conf.event_serializer, event, {"hostname": self._hostname}, event_properties
        )
        return TaskMessage(queue, message, self._event_channel, envelope)


class UnsupportedBrokerOption(RuntimeError):
    pass


def refuse_what_the_messages_cannot_honour(celery: Celery) -> None:
    options = celery.conf.broker_transport_options or {}
    if options.get("global_keyprefix"):
        raise UnsupportedBrokerOption(
            "broker_transport_options.global_keyprefix is set, but the API writes task messages under the "
            "queue's own name (api/enqueue.py): workers would never see them. Remove the prefix."
        )
    prioritised = any(q.max_priority for q in celery.amqp.queues.values())
    if prioritised or options.get("priority_steps") or celery.conf.task_default_priority is not None:
        raise UnsupportedBrokerOption(
            "message priorities are configured, but the API enqueues every task at priority 0 "
            "(api/enqueue.py); interactive jobs go first through LM capacity instead (core/capacity.py)."
        )


@functools.cache
def task_messages(celery: Celery) -> TaskMessages:
    return TaskMessages(celery)
