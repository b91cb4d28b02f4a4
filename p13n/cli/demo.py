"""``p13n demo seed``: a synthetic shop, so the embedded recommender has something to learn from.

It makes a catalog (items with a category, a title and a price), loads it as the namespace's
item metadata (the ``localdb`` store in the data dir), and posts a clickstream through the
service's own HTTP API, as a client app would: each user prefers one or two categories, items
within a category follow a Zipf-like popularity, and a session is 2 to 8 events posted in one
request. Everything is drawn from one seeded random generator: the same arguments give the same
catalog and the same clicks.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from tqdm import tqdm

from p13n.cli.common import Commands, config_of, with_config
from query.metadata.localdb import default_path, load_items
from schemas.config import Config

CATEGORIES = (
    "books",
    "music",
    "garden",
    "kitchen",
    "toys",
    "sports",
    "beauty",
    "electronics",
)
ADJECTIVES = ("Classic", "Compact", "Deluxe", "Handmade", "Modern", "Pocket", "Smart", "Vintage")
NOUNS = {
    "books": ("Novel", "Cookbook", "Atlas", "Biography"),
    "music": ("Vinyl", "Songbook", "Headphones", "Ukulele"),
    "garden": ("Trowel", "Planter", "Hose", "Seed Kit"),
    "kitchen": ("Skillet", "Kettle", "Knife", "Mixer"),
    "toys": ("Puzzle", "Robot", "Kite", "Board Game"),
    "sports": ("Ball", "Racket", "Yoga Mat", "Bottle"),
    "beauty": ("Serum", "Brush", "Soap", "Balm"),
    "electronics": ("Charger", "Speaker", "Lamp", "Keyboard"),
}
EVENT_TYPES = (("View", 0.75), ("AddToCart", 0.17), ("Purchase", 0.08))
FAVOURITE_SHARE = 0.8
CONCURRENCY = 8


@dataclass(frozen=True)
class Item:
    item_id: str
    category: str
    title: str
    price: float

    def metadata(self) -> dict[str, Any]:
        return {"category": self.category, "title": self.title, "price": self.price}


def catalog(rng: random.Random, count: int) -> list[Item]:
    items = []
    for index in range(count):
        category = CATEGORIES[index % len(CATEGORIES)]
        title = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS[category])}"
        items.append(Item(f"item-{index + 1:05d}", category, title, round(rng.uniform(3, 250), 2)))
    return items


def sessions(
    rng: random.Random, items: list[Item], users: int, events: int
) -> Iterator[dict[str, Any]]:
    """Request bodies for ``POST /events``, ``events`` events in all."""
    by_category: dict[str, list[Item]] = {c: [] for c in CATEGORIES}
    for item in items:
        by_category[item.category].append(item)
    # Zipf-like: the k-th item of a category is picked with weight 1/k.
    weights = {c: [1 / (k + 1) for k in range(len(v))] for c, v in by_category.items()}
    favourites = {
        f"user-{u + 1:04d}": rng.sample(CATEGORIES, rng.choice((1, 2))) for u in range(users)
    }
    user_ids = list(favourites)
    now = time.time()
    left = events
    number = 0
    while left > 0:
        number += 1
        user = rng.choice(user_ids)
        size = min(left, rng.randint(2, 8))
        body_events = []
        for position in range(size):
            if rng.random() < FAVOURITE_SHARE:
                category = rng.choice(favourites[user])
            else:
                category = rng.choice(CATEGORIES)
            pool = by_category[category]
            item = rng.choices(pool, weights[category])[0]
            event_type = rng.choices([t for t, _ in EVENT_TYPES], [w for _, w in EVENT_TYPES])[0]
            body_events.append(
                {
                    "eventType": event_type,
                    "itemId": item.item_id,
                    "sentAt": round(now - (left - position), 3),
                }
            )
        left -= size
        yield {"userId": user, "sessionId": f"{user}-s{number}", "eventList": body_events}


async def post_all(
    url: str, namespace: str, bodies: list[dict[str, Any]], api_key: str | None, progress: Any
) -> int:
    headers = {"x-api-key": api_key} if api_key else {}
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    accepted = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal accepted
        while not queue.empty():
            body = queue.get_nowait()
            for attempt in range(5):
                reply = await client.post(f"/events/{namespace}", json=body, headers=headers)
                if reply.status_code != 503:
                    break
                # The service asks to come back later (its queue is full): do as it says.
                await asyncio.sleep(float(reply.headers.get("retry-after", 1)) * (attempt + 1))
            if reply.status_code != 202:
                raise SystemExit(
                    f"POST /events/{namespace} answered {reply.status_code}: {reply.text}"
                )
            accepted += reply.json()["accepted"]
            progress.update(len(body["eventList"]))

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return accepted


def seed(args: argparse.Namespace, config: Config) -> int:
    if args.namespace not in config.namespaces:
        print(f"namespace '{args.namespace}' is not in the config", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    items = catalog(rng, args.items)
    loaded = load_items(
        default_path(config.data_dir),
        args.namespace,
        ((item.item_id, item.metadata()) for item in items),
    )
    bodies = list(sessions(rng, items, args.users, args.events))
    with tqdm(total=args.events, unit="event", desc="posting", file=sys.stderr) as progress:
        try:
            accepted = asyncio.run(
                post_all(args.url, args.namespace, bodies, args.api_key, progress)
            )
        except httpx.HTTPError as exc:
            print(f"cannot reach the service at {args.url}: {exc}", file=sys.stderr)
            return 1
    print(
        f"seeded '{args.namespace}': {loaded} items, {args.users} users, "
        f"{accepted} events in {len(bodies)} sessions"
    )
    print(f"try: curl {args.url}/recommend-items/{args.namespace}/for-you/user-0001")
    return 0


def add_command(commands: Commands) -> None:
    demo = commands.add_parser("demo", help="try the service with synthetic data")
    demo_commands = demo.add_subparsers(dest="demo_command", required=True)
    demo_seed = with_config(
        demo_commands.add_parser(
            "seed",
            help="load a synthetic catalog and post a clickstream to a running service",
        )
    )
    add_arguments(demo_seed)
    demo_seed.set_defaults(func=lambda args: seed(args, config_of(args)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    parser.add_argument("--namespace", default="demo", help="the namespace to seed")
    parser.add_argument("--users", type=_positive, default=200, help="synthetic users")
    parser.add_argument("--items", type=_positive, default=400, help="catalog items")
    parser.add_argument("--events", type=_positive, default=5000, help="events to post")
    parser.add_argument("--seed", type=int, default=13, help="random seed (same seed, same data)")
    parser.add_argument("--api-key", help="x-api-key to send when the service requires one")


def _positive(text: str) -> int:
    # Not common.positive: demo seed's messages ("invalid _positive value", "must be at least
    # 1") are its own, and kept.
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
