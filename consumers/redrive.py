"""``p13n dead-letters redrive``: send a group's dead letters through its target again.

Letters go in the order they were written, through the same runner (same retries; a letter that
fails again becomes a new letter). Each letter id is marked redriven once its attempt is
settled, so running redrive twice never sends a letter twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from consumers.deadletters import DeadLetter
from consumers.runner import GroupConsumer
from streams.base import UserRecord


@dataclass(frozen=True)
class RedriveSummary:
    letters: int
    delivered: int
    dead_lettered: int


def pending_letters(consumer: GroupConsumer) -> Iterator[DeadLetter]:
    done = consumer.dead_letters.redriven(consumer.group)
    for letter in consumer.dead_letters.list(consumer.group):
        if letter.letter_id not in done:
            yield letter


def redrive(consumer: GroupConsumer, chunk: int = 100) -> RedriveSummary:
    letters = list(pending_letters(consumer))
    delivered = dead = 0
    # A redrive is a fresh start for each letter: its age counts from now, or
    # maxRecordAgeSeconds would dead-letter old letters again without trying them.
    now_ms = int(time.time() * 1000)
    consumer.target.open()
    try:
        for start in range(0, len(letters), chunk):
            part = letters[start : start + chunk]
            records = [
                UserRecord(
                    letter.shard_id,
                    letter.sequence_number,
                    letter.sub_sequence,
                    letter.partition_key,
                    letter.data,
                    now_ms,
                )
                for letter in part
            ]
            ok, failed = consumer.settle(records)
            consumer.dead_letters.mark_redriven(
                consumer.group, [letter.letter_id for letter in part]
            )
            delivered += ok
            dead += failed
    finally:
        consumer.target.close()
    return RedriveSummary(len(letters), delivered, dead)
