"""``p13n dead-letters list`` and ``redrive``: what the targets gave up on, and sending it again."""

from __future__ import annotations

import argparse
import json

from p13n.cli.common import Commands, config_of, with_config


def add_command(commands: Commands) -> None:
    letters = commands.add_parser("dead-letters", help="inspect and redrive dead letters")
    letter_commands = letters.add_subparsers(dest="letters_command", required=True)
    listing = with_config(
        letter_commands.add_parser("list", help="print dead letters as JSON lines")
    )
    listing.add_argument("--target", action="append", help="only this target; repeatable")
    listing.set_defaults(func=cmd_dead_letters_list)
    again = with_config(letter_commands.add_parser("redrive", help="send a target's letters again"))
    again.add_argument("--target", required=True, help="target name or namespace/name")
    again.set_defaults(func=cmd_dead_letters_redrive)


def cmd_dead_letters_list(args: argparse.Namespace) -> int:
    from consumers.deadletters import dead_letter_store
    from consumers.supervisor import select_targets

    config = config_of(args)
    for target in select_targets(config, args.target):
        store = dead_letter_store(target.dead_letter_uri or config.dead_letter_uri, config.data_dir)
        done = store.redriven(target.group)
        for letter in store.list(target.group):
            entry = letter.to_json()
            entry.pop("data")
            entry["bytes"] = len(letter.data)
            entry["redriven"] = letter.letter_id in done
            print(json.dumps(entry))
    return 0


def cmd_dead_letters_redrive(args: argparse.Namespace) -> int:
    from consumers.redrive import redrive
    from consumers.supervisor import ConsumerSet

    consumers = ConsumerSet(config_of(args), targets=[args.target])
    for target in consumers.targets:
        summary = redrive(consumers.build(target))
        print(
            f"{target.group}: {summary.letters} letter(s) redriven: {summary.delivered} delivered, "
            f"{summary.dead_lettered} dead-lettered again"
        )
    return 0
