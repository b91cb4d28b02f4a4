"""The embedded recommender against hand-made interaction tables with a fixed clock."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from consumers.targets.interactions import SCHEMA
from query.local import LocalRecommender

NOW_S = 1_700_000_000.0
NOW_MS = int(NOW_S * 1000)
DAY_MS = 86_400_000


def clock() -> float:
    return NOW_S


def build(path: Path, rows: list[tuple[str, str | None, str, str | None, float]]) -> str:
    """Rows are (namespace, user, session, item, days ago); one interaction each."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    counter = itertools.count()
    conn.executemany(
        "INSERT INTO interactions (event_id, namespace, user_id, session_id, item_id, event_type,"
        " event_value, ts_ms) VALUES (?, ?, ?, ?, ?, 'View', NULL, ?)",
        [
            (f"e{next(counter)}", ns, user, session, item, NOW_MS - int(days * DAY_MS))
            for ns, user, session, item, days in rows
        ],
    )
    conn.commit()
    conn.close()
    return str(path)


@pytest.fixture
def db(tmp_path: Path):
    def make(rows):
        return LocalRecommender(build(tmp_path / "interactions.db", rows), clock=clock)

    return make


def test_decay_lets_a_fresh_item_beat_an_old_popular_one(db) -> None:
    rec = db(
        [
            ("ns", "u1", "s1", "old", 28),
            ("ns", "u2", "s2", "old", 28),
            ("ns", "u3", "s3", "old", 28),
            ("ns", "u4", "s4", "fresh", 0),
        ]
    )
    # three interactions four half-lives ago weigh 3 / 16
    assert rec.recommend("ns", "nobody", 5) == [("fresh", 1.0), ("old", 0.1875)]


def test_recommend_excludes_seen_and_excluded_items_without_refilling(db) -> None:
    rows = [("ns", "u1", "s1", "a", 0)]
    rows += [("ns", f"x{i}", f"t{i}", "a", 0) for i in range(3)]
    rows += [("ns", f"y{i}", f"v{i}", "b", 0) for i in range(2)]
    rows += [("ns", "z", "w", "c", 0), ("ns", "z", "w", None, 0)]
    rec = db(rows)
    assert rec.recommend("ns", "u1", 5) == [("b", 2.0), ("c", 1.0)]
    assert rec.recommend("ns", "u1", 5, exclude=("c",)) == [("b", 2.0)]
    assert rec.recommend("ns", "u1", 1) == [("b", 2.0)]
    assert rec.recommend("ns", None, 2) == [("a", 4.0), ("b", 2.0)]
    assert rec.recommend("ns", "u1", 0) == []


def test_namespaces_are_isolated(db) -> None:
    rec = db(
        [
            ("one", "u", "s", "a", 0),
            ("two", "v", "t", "x", 0),
            ("two", "w", "r", "x", 0),
            ("two", "u", "q", "a", 0),
            ("two", "v", "s", "b", 0),
        ]
    )
    assert rec.recommend("one", "v", 5) == [("a", 1.0)]
    assert rec.recommend("one", "u", 5) == []
    # session "s" in namespace two is another session than "s" in namespace one
    assert rec.related("one", "a", 5) == []
    assert rec.rerank("one", "u", ["x", "b", "a"]) == [("a", 0.1), ("x", 0.0), ("b", 0.0)]


def test_related_by_shared_sessions_then_popularity(db) -> None:
    rec = db(
        [("ns", "u1", "s1", "A", 0), ("ns", "u1", "s1", "B", 0), ("ns", "u1", "s1", "C", 0)]
        + [("ns", "u2", "s2", "A", 0), ("ns", "u2", "s2", "B", 0), ("ns", "u2", "s2", "B", 7)]
        + [("ns", "u3", "s3", "A", 14), ("ns", "u3", "s3", "E", 14)]
        + [("ns", f"p{i}", f"p{i}", "D", 0) for i in range(5)]
        + [("ns", "u4", "s5", "F", 0), ("ns", "u4", "s5", None, 0)]
    )
    # B: two sessions, latest B in each is fresh; E: one session two half-lives ago
    assert rec.related("ns", "A", 5) == [
        ("B", 2.0),
        ("C", 1.0),
        ("E", 0.25),
        ("D", 5.0),
        ("F", 1.0),
    ]
    assert rec.related("ns", "A", 2) == [("B", 2.0), ("C", 1.0)]
    assert rec.related("ns", "A", 4, user_id="u1") == [
        ("B", 2.0),
        ("C", 1.0),
        ("E", 0.25),
        ("D", 5.0),
    ]
    assert rec.related("ns", "unknown", 2) == [("D", 5.0), ("B", 2.5)]
    assert rec.related("ns", "D", 3) == [("B", 2.5), ("A", 2.25), ("C", 1.0)]


def test_rerank_by_affinity_then_popularity(db) -> None:
    rec = db(
        [("ns", "u", "su", "A", 0)]
        + [("ns", "x", "s1", "A", 0), ("ns", "x", "s1", "B", 0)]
        + [("ns", "y", "s2", "A", 0), ("ns", "y", "s2", "B", 0)]
        + [("ns", "z", "s3", "A", 0), ("ns", "z", "s3", "C", 0)]
        + [("ns", f"p{i}", f"p{i}", "D", 0) for i in range(5)]
    )
    # affinity(B)=2, affinity(C)=1; popularity 2, 1, 5 over a candidate maximum of 5
    assert rec.rerank("ns", "u", ["D", "C", "B"]) == [("B", 2.04), ("C", 1.02), ("D", 0.1)]
    # no history: popularity alone
    assert rec.rerank("ns", "new", ["C", "B", "D"]) == [("D", 0.1), ("B", 0.04), ("C", 0.02)]
    # a recent item is not its own neighbour
    assert rec.rerank("ns", "u", ["A", "C"]) == [("C", 1.025), ("A", 0.1)]


def test_rerank_keeps_unknown_items_and_duplicates_in_input_order(db) -> None:
    rec = db([("ns", "u", "su", "A", 0), ("ns", "x", "s1", "A", 0), ("ns", "x", "s1", "B", 0)])
    assert rec.rerank("ns", "u", ["Z", "Y", "B", "Z", "B"]) == [
        ("B", 1.1),
        ("B", 1.1),
        ("Z", 0.0),
        ("Y", 0.0),
        ("Z", 0.0),
    ]
    assert rec.rerank("ns", "u", []) == []


def test_missing_or_empty_database_reads_as_no_interactions(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.db", tmp_path / "empty.db"):
        if path.name == "empty.db":
            sqlite3.connect(path).close()
        rec = LocalRecommender(str(path), clock=clock)
        assert rec.recommend("ns", "u", 5) == []
        assert rec.related("ns", "a", 5) == []
        assert rec.rerank("ns", "u", ["b", "a"]) == [("b", 0.0), ("a", 0.0)]
    assert not (tmp_path / "absent.db").exists()


def test_reads_committed_rows_while_the_writer_holds_a_transaction(tmp_path: Path) -> None:
    path = build(tmp_path / "interactions.db", [("ns", "u", "s", "a", 0)])
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute(
        "INSERT INTO interactions VALUES ('late', 'ns', 'v', 't', 'b', 'View', NULL, ?)", (NOW_MS,)
    )
    rec = LocalRecommender(path, clock=clock)
    assert rec.recommend("ns", "x", 5) == [("a", 1.0)]
    writer.execute("COMMIT")
    writer.close()
    assert rec.recommend("ns", "x", 5) == [("a", 1.0), ("b", 1.0)]


def test_results_are_deterministic_with_ties_by_item_id(db) -> None:
    rec = db(
        [("ns", "u", "s", item, 1) for item in ("c", "a", "b")]
        + [("ns", "v", "t", item, 1) for item in ("b", "c")]
    )
    first = rec.recommend("ns", "w", 5)
    assert first == rec.recommend("ns", "w", 5)
    assert [item for item, _ in first] == ["b", "c", "a"]
    assert [item for item, _ in rec.related("ns", "a", 5)] == ["b", "c"]
    assert [item for item, _ in rec.related("ns", "c", 5)] == ["b", "a"]
    assert rec.related("ns", "c", 5) == rec.related("ns", "c", 5)


def test_half_life_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LocalRecommender("x.db", half_life_days=0)


def test_affinity_ranks_the_users_own_categories_before_popular_ones(db) -> None:
    # u touched toys three times and books once; "hot" (garden) is the most popular item.
    rec = db(
        [("ns", "u", "su", "t1", 0), ("ns", "u", "su", "t1", 0), ("ns", "u", "su", "t2", 0)]
        + [("ns", "u", "su", "b1", 0)]
        + [("ns", f"p{i}", f"p{i}", "hot", 0) for i in range(8)]
        + [("ns", f"q{i}", f"q{i}", "t3", 0) for i in range(2)]
        + [("ns", f"r{i}", f"r{i}", "b2", 0) for i in range(4)]
    )
    category = {"t1": "toys", "t2": "toys", "t3": "toys", "b1": "books", "b2": "books"}
    category["hot"] = "garden"

    def categories(ids):
        return {i: category[i] for i in ids if i in category}

    # share(toys) = 3/4, share(books) = 1/4: t3 scores 0.75 * 2, b2 0.25 * 4; garden 0
    assert rec.affinity("ns", "u", 3, categories) == [("t3", 1.5), ("b2", 1.0), ("hot", 0.0)]
    # without categorised history: co-occurrence order over the same unseen pool
    assert (
        rec.affinity("ns", "u", 2, lambda ids: {}) == rec.rerank("ns", "u", ["hot", "b2", "t3"])[:2]
    )
    # a new user: nothing to go on but popularity
    assert [item for item, _ in rec.affinity("ns", "new", 2, categories)] == ["hot", "b2"]
