"""``georeference-jobs``: queue and inspect jobs without writing SQL."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from georeference.cli.options import add_config_option
from georeference.cli.output import discard_stdout
from georeference.database import check_database, make_engine
from georeference.errors import ConfigurationError, StorageError
from georeference.jobs import JOB_TYPES
from georeference.models import Job, JobHistory, Transformation
from georeference.settings import load_settings

EXIT_OK = 0
EXIT_ERROR = 2


def _add(session: Session, args: argparse.Namespace) -> int:
    if args.type not in JOB_TYPES:
        raise ConfigurationError(
            f"unknown job type {args.type!r}; expected one of {', '.join(JOB_TYPES)}")
    description: dict[str, object] = {}
    if args.type != "initialize_data":
        if args.transformation_id is None:
            raise ConfigurationError(f"{args.type} needs --transformation-id")
        if session.get(Transformation, args.transformation_id) is None:
            raise ConfigurationError(f"transformation {args.transformation_id} does not exist")
        description["transformation_id"] = args.transformation_id
    if args.comment is not None:
        description["comment"] = args.comment
    job = Job(type=args.type, description=json.dumps(description), user_id=args.user)
    session.add(job)
    session.commit()
    print(f"queued job {job.id}: {job.type} {job.description}")
    return EXIT_OK


def _list(session: Session, args: argparse.Namespace) -> int:
    query = select(Job).order_by(Job.id.desc()).limit(args.limit)
    if args.state:
        query = query.where(Job.state == args.state)
    jobs = session.scalars(query).all()
    print(f"{'id':>6}  {'type':<27} {'state':<12} {'map':>5}  {'submitted':<19}  comment")
    for job in jobs:
        comment = (job.comment or "").replace("\n", " ")
        if len(comment) > 60:
            comment = comment[:57] + "..."
        map_id = "" if job.raw_map_id in (None, 0) else str(job.raw_map_id)
        print(f"{job.id:>6}  {job.type:<27} {job.state:<12} {map_id:>5}  "
              f"{job.submitted:%Y-%m-%d %H:%M:%S}  {comment}")
    return EXIT_OK


def _show(session: Session, args: argparse.Namespace) -> int:
    job = session.get(Job, args.id)
    if job is None:
        history = session.get(JobHistory, args.id)
        if history is None:
            raise ConfigurationError(f"job {args.id} not found")
        job = history
    for name in ("id", "type", "state", "description", "submitted", "user_id", "raw_map_id",
                 "claimed_by", "started", "finished", "attempts", "comment"):
        value = getattr(job, name)
        if name == "raw_map_id" and value in (None, 0):
            # 0 is the queue's key for jobs that concern no single map, as "-" is in the log.
            value = "-"
        print(f"{name:>12}: {value}")
    in_history = session.get(JobHistory, args.id) is not None
    print(f"{'history':>12}: {'yes' if in_history else 'no'}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from georeference.daemon.runner import default_config_path

    parser = argparse.ArgumentParser(prog="georeference-jobs",
                                     description="Queue and inspect georeference jobs.")
    config = add_config_option(parser)
    parser.set_defaults(default_config=default_config_path())
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", parents=[config], help="queue a job")
    add.add_argument("type", help=f"job type: {', '.join(JOB_TYPES)}")
    add.add_argument("--transformation-id", type=int, help="id in the transformations table")
    add.add_argument("--comment", help="review comment, stored with the transformation")
    add.add_argument("--user", default="operator", help="user id recorded with the job")
    listing = commands.add_parser("list", parents=[config], help="list the newest jobs")
    listing.add_argument("--state", choices=("not_started", "running", "completed", "failed"))
    listing.add_argument("--limit", type=int, default=20, help="rows to show (default: 20)")
    show = commands.add_parser("show", parents=[config], help="show one job")
    show.add_argument("id", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config or args.default_config)
        engine = make_engine(settings.database_url)
        check_database(engine)
        with Session(engine) as session:
            handler = {"add": _add, "list": _list, "show": _show}[args.command]
            return handler(session, args)
    except (ConfigurationError, StorageError) as exc:
        print(f"georeference-jobs: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except SQLAlchemyError as exc:
        print(f"georeference-jobs: database error: {str(getattr(exc, 'orig', exc)).strip()}",
              file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        discard_stdout()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
