"""``longclip push MODEL REPO_ID``: upload a model to the Hugging Face hub with a generated model card."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_command


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "push",
        help="upload a model with a generated model card to the Hugging Face hub",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
        epilog="--dry-run prepares the folder and card and prints them, without any network access.",
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint: .pt file, directory or hub id")
    parser.add_argument("repo_id", metavar="REPO_ID", help="hub repository, owner/name (created if needed)")
    parser.add_argument("--dry-run", action="store_true", help="prepare and show the upload, do not send it")
    parser.add_argument("--folder", metavar="DIR", help="prepare the upload here (default: a temporary folder)")
    parser.add_argument("--results", metavar="FILE", help="evaluation results (JSON) for the card")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", default=None, help="hub token (default: the saved login)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..integrations.hub import push_to_hub

    plan = push_to_hub(
        args.model,
        args.repo_id,
        dry_run=args.dry_run,
        folder=args.folder,
        results_file=args.results,
        private=args.private,
        token=args.token,
        commit_message=args.message,
    )
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(plan.files)} files to {plan.repo_id}" + (f" from {plan.folder}" if args.dry_run else ""))
    for name, size in plan.files:
        print(f"  {name}  ({size:,} bytes)")
    if args.dry_run:
        print("\n--- README.md ---\n" + plan.card)
    elif plan.url:
        print(plan.url)
    return 0
