"""The ``fiftyone-qdrant`` command.

Each subcommand is a function in :data:`COMMANDS` that adds its parser to
the argparse subparsers and sets ``run`` (``args -> exit status``); add a
subcommand by appending one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from .errors import QdrantBackendError

EXIT_OK = 0
EXIT_DEAD_LETTERS = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

DEFAULT_DEAD_LETTER = "qdrant-sink.dead-letter.jsonl"

_SINK_DESCRIPTION = """\
Stream vector records (JSON lines, the format of Qdrant's Fluvio/Kafka sink
connectors) into Qdrant: the embedded store by default, or a server with --url.

Each line is one record:
  {"collection_name": "images", "id": 7, "vectors": [0.1, 0.2], "payload": {...}}
id: unsigned integer or UUID string. vectors (alias: vector): a dense list
(unnamed vector) or a map of name -> dense list | {"indices": [...],
"values": [...]} (sparse) | list of lists (multi-vector). payload: optional.
Deletes are explicit, as in the Kafka connector: a tombstone (value null),
  {"key": {"collection_name": "images", "id": 7}, "value": null}
deletes point 7 (a Fluvio record with a key and an empty or null value is
one). A record with an id and a payload but no vectors updates the payload
of an existing point (merged, vectors kept) and never deletes anything.

Records are batched per collection; the last record for an id in a batch
wins. Missing collections are created from their first record (dense sizes,
sparse names, max-sim multi-vectors, --distance) unless
--no-create-collections; a first record whose payload has
sample_id/label_id gets keyword indexes on them, for FiftyOne.
Transient errors are retried with backoff. Records that can never be
written go to the dead-letter file with the reason. A file's byte offset is
committed to the checkpoint file only after its records are written, so
re-running resumes after a crash without loss or duplicates (stdin and
pipes are not checkpointed), and writes no dead letter twice. A file is
read to its current end; a rotated or rewritten file is read from its
start; an unfinished last line (no newline, not valid JSON) is left for
the next run.

Exit status: 0 all written, 1 some records dead-lettered, 2 usage or
configuration error, 3 stopped because Qdrant (or the Fluvio topic) stayed
unavailable or refused writes: re-run to resume, 130 interrupted.
"""


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where (embedded store by default)")
    group.add_argument("--path", help="embedded store directory, even when a server URL is configured (default: "
                                      "$FIFTYONE_BRAIN_SIMILARITY_QDRANT_PATH or ~/.fiftyone/qdrant)")
    group.add_argument("--url", help="Qdrant server URL (default: $FIFTYONE_BRAIN_SIMILARITY_QDRANT_URL or "
                                     "~/.fiftyone/brain_config.json)")
    group.add_argument("--api-key", help="Qdrant API key (default: $FIFTYONE_BRAIN_SIMILARITY_QDRANT_API_KEY or "
                                         "~/.fiftyone/brain_config.json)")
    group.add_argument("--grpc-port", type=int, help="the server's gRPC port")
    group.add_argument("--prefer-grpc", action="store_true", default=None, help="talk gRPC to the server")
    group.add_argument("--timeout", type=float, help="server request timeout in seconds")


def _connection(args: argparse.Namespace) -> Dict[str, Any]:
    """The connection flags given; unset ones come from the brain config."""
    return {"path": args.path, "url": args.url, "api_key": args.api_key, "grpc_port": args.grpc_port,
            "prefer_grpc": args.prefer_grpc, "timeout": args.timeout}


def _add_sink_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "sink",
        help="stream JSON-lines vector records (Qdrant connector format) into Qdrant",
        description=_SINK_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", metavar="FILE", help="JSON-lines files; '-' or none: stdin")
    _add_connection_arguments(parser)
    writing = parser.add_argument_group("writing")
    writing.add_argument("--distance", default="cosine",
                         help="distance of created collections: cosine (default), dotproduct, euclidean, manhattan")
    writing.add_argument("--collection-name",
                         help="write every record to this collection, whatever its collection_name says (the Kafka "
                              "connector's qdrant.collection.name)")
    writing.add_argument("--no-create-collections", dest="create_collections", action="store_false",
                         help="dead-letter records for collections that do not exist instead of creating them")
    writing.add_argument("--batch-size", type=int, default=1000, help="points per write, per collection (1000)")
    writing.add_argument("--max-delay", type=float, default=1.0,
                         help="seconds a record may wait in a batch before it is written (1.0)")
    writing.add_argument("--commit-interval", type=float, default=5.0,
                         help="seconds between making writes durable and committing offsets (5)")
    writing.add_argument("--max-retries", type=int, default=8,
                         help="retries of a transient failure before stopping; -1: forever (8)")
    writing.add_argument("--dead-letter", default=DEFAULT_DEAD_LETTER,
                         help="JSONL file for records that cannot be written (%s)" % DEFAULT_DEAD_LETTER)
    writing.add_argument("--checkpoint", help="offsets file (default: beside the dead-letter file)")
    writing.add_argument("--from-start", action="store_true",
                         help="ignore committed offsets and read inputs from the start")
    fluvio = parser.add_argument_group("Fluvio source (pip install 'fiftyone-qdrant[fluvio]')")
    fluvio.add_argument("--fluvio-topic", help="read this Fluvio topic instead of files")
    fluvio.add_argument("--fluvio-partition", type=int, default=0, help="partition to read (0)")
    fluvio.add_argument("--fluvio-endpoint", help="Fluvio SC address host:port (default: the current Fluvio profile)")
    fluvio.add_argument("--connector-config", help="the reference connector's config.yaml (meta.topic, qdrant.url, "
                                                   "qdrant.api_key with ${{ secrets.NAME }}); its url is Qdrant's "
                                                   "gRPC URL (port 6334 by default), used over gRPC as the "
                                                   "connector does")
    fluvio.add_argument("--secrets", help="connector secrets file (NAME=value lines); the environment is the fallback")
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    output.add_argument("-v", "--verbose", action="store_true", help="log every step")
    parser.set_defaults(run=_run_sink)


def _run_sink(args: argparse.Namespace) -> int:
    from . import sink

    connection, topic = _connection(args), args.fluvio_topic
    if args.connector_config:
        connector = sink.load_connector_config(args.connector_config, args.secrets)
        # the connector's url is a gRPC URL: its settings apply unless --url names another server
        from_config = connector.connection() if not args.url else {"api_key": connector.api_key}
        connection = {**from_config, **{k: v for k, v in connection.items() if v is not None}}
        topic = topic or connector.topic
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = sink.run_sink(
            args.inputs,
            fluvio_topic=topic,
            fluvio_partition=args.fluvio_partition,
            fluvio_endpoint=args.fluvio_endpoint,
            dead_letter_path=args.dead_letter,
            checkpoint_path=args.checkpoint,
            from_start=args.from_start,
            connection=connection,
            distance=args.distance,
            collection_name=args.collection_name,
            create_collections=args.create_collections,
            batch_size=args.batch_size,
            max_delay_s=args.max_delay,
            commit_interval_s=args.commit_interval,
            max_retries=None if args.max_retries < 0 else args.max_retries,
        )
    except sink.SinkUnavailableError as e:
        if e.report is not None:
            _print_report(e.report, args)
        print("fiftyone-qdrant sink: %s" % e, file=sys.stderr)
        return EXIT_UNAVAILABLE

    _print_report(report, args)
    if report.interrupted:
        return EXIT_INTERRUPTED
    if report.dead_lettered:
        print("fiftyone-qdrant sink: %d record(s) dead-lettered to %s"
              % (report.dead_lettered, os.path.abspath(args.dead_letter)), file=sys.stderr)
        return EXIT_DEAD_LETTERS
    return EXIT_OK


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _print_report(report, args: argparse.Namespace) -> None:
    print("fiftyone-qdrant sink: %s" % report.summary(), file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))


def _add_list_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "list",
        help="list the collections of a Qdrant store with their FiftyOne runs",
        description="List every collection in a Qdrant store, its size and the FiftyOne brain runs "
                    "recorded with it (see fiftyone_qdrant.list_indexes).",
    )
    _add_connection_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=_run_list)


def _run_list(args: argparse.Namespace) -> int:
    from .catalog import list_indexes

    indexes = list_indexes(**_connection(args))
    if args.json:
        print(json.dumps(indexes, indent=1, default=str))
        return EXIT_OK
    if not indexes:
        print("No collections")
        return EXIT_OK
    width = max(len(i["collection_name"]) for i in indexes)
    for index in indexes:
        runs = ", ".join("%s/%s" % (r.get("dataset_name"), r.get("brain_key")) for r in index["runs"]) or "-"
        print("%-*s  %10d points  runs: %s" % (width, index["collection_name"], index["size"], runs))
    return EXIT_OK


def _add_service_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "service",
        help="start, show or stop the local Qdrant service of an embedded store",
        description="Every process reaches an embedded store through its local Qdrant service, started "
                    "on demand and stopped when idle (no client process alive). This shows it, starts it "
                    "ahead of time, or stops it (it flushes and closes every collection first).",
    )
    parser.add_argument("action", choices=["status", "start", "stop"])
    parser.add_argument("--path", help="the store directory (default: as a brain run resolves it: "
                        "$FIFTYONE_BRAIN_SIMILARITY_QDRANT_PATH, else ~/.fiftyone/qdrant)")
    parser.set_defaults(run=_run_service)


def _run_service(args: argparse.Namespace) -> int:
    from . import local
    from .connection import default_store_path

    root = os.path.abspath(os.path.expanduser(args.path or default_store_path()))
    if args.action == "start":
        local.ensure_service(root)
    elif args.action == "stop":
        print("stopped" if local.stop_service(root) else "not running: %s" % root)
        return EXIT_OK
    status = local.service_status(root)
    if status is None:
        print("not running: %s" % root)
    else:
        print("running: pid %(pid)s on %(address)s, store %(store)s, log %(log)s" % status)
    return EXIT_OK


def _add_status_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show which FiftyOne integrations of this package are active, and why",
        description="fiftyone-qdrant changes FiftyOne in four places (see fiftyone_qdrant.integration): "
                    "backend registration, built-in class aliasing, App plugin discovery and the "
                    "prompt-warning filter. This imports the FiftyOne modules they apply to, as the App "
                    "server does, and shows each one. FIFTYONE_QDRANT_DISABLE_PLUGIN=true turns all off.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    import dataclasses

    from . import integration

    patches = integration.status()
    if args.json:
        print(json.dumps([dataclasses.asdict(p) for p in patches], indent=1))
        return EXIT_OK
    for patch in patches:
        print("%-24s %-8s %s" % (patch.name, "active" if patch.active else "inactive", patch.why))
    return EXIT_OK


#: functions that add a subcommand; append to add one
def _add_plugin_command(subparsers) -> None:
    from .plugin import add_cli_command

    add_cli_command(subparsers)


COMMANDS: List[Callable] = [
    _add_sink_command, _add_list_command, _add_service_command, _add_plugin_command, _add_status_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fiftyone-qdrant", description="Qdrant tools for FiftyOne")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="fiftyone-qdrant: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.run(args)
    except (QdrantBackendError, OSError) as e:
        print("fiftyone-qdrant %s: %s" % (args.command, e), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
