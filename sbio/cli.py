"""The ``sbio`` command: ``sbio run`` serves, ``sbio call`` / ``sbio subscribe`` are clients.

    sbio run [--host H] [--port P] [--namespaces DIR]... [--config FILE] [--debug]
    sbio call URL EVENT [ARG ...] [--namespace NS] [--auth JSON] [--timeout S]
    sbio subscribe URL EVENT [ARG ...] [--count N] [--namespace NS] [--auth JSON] [--timeout S]

``sbio run`` (also installed as ``run_server``) serves the namespaces of a directory.

Every module and package in each namespaces directory (``namespaces/`` by
default, relative to the current directory) is imported, and every
:class:`sbio.Namespace` subclass defined there with a ``name`` is hosted.
A module-level ``blueprint`` (a :class:`flask.Blueprint`) of such a module is
registered on the server's Flask app: that is how an application adds pages.
SIGINT and SIGTERM stop the server gracefully.

``sbio call`` and ``sbio subscribe`` connect an :class:`sbio.Client` (the
namespace is the URL's path or ``--namespace``), print the result, or each
result of the subscription, as one line of JSON on stdout, and exit 0; an
error answer is printed as ``{"error": {"code", "message"}}`` on stderr, exit
1; a connection that fails or is refused exits 3; bad arguments 2; Ctrl-C 130.
Each ARG is parsed as JSON if it is valid JSON (``42``, ``true``, ``null``,
``'{"a": 1}'``, ``'"42"'`` for the string) and taken as a string otherwise.
See docs/python-client.md.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .errors import NamespaceLoadError

if TYPE_CHECKING:
    from flask import Blueprint

    from .config import Config
    from .namespace import Namespace
    from .server import Server

log = logging.getLogger("sbio.cli")

__all__ = ["main", "make_server", "load_namespaces", "load_blueprints", "NamespaceLoadError",
           "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_CONNECTION", "EXIT_INTERRUPTED"]

#: exit statuses of ``sbio call`` / ``sbio subscribe``
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONNECTION, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: the commands that are clients (they do not monkey-patch)
_CLIENT_COMMANDS = ("call", "subscribe")


def _module_entries(directory: str) -> Iterator[tuple[str, str]]:
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if entry.startswith(("_", ".", "test_")):
            continue
        if entry.endswith(".py") and os.path.isfile(path):
            yield entry[:-3], path
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            yield entry, os.path.join(path, "__init__.py")


def _import_modules(directories: Iterable[str]) -> Iterator[tuple[str, ModuleType]]:
    """Import every module of *directories*; yield ``(module_name, module)``.

    :raises NamespaceLoadError: naming the file, when a module fails to import.
    """
    for directory in directories:
        directory = os.path.abspath(directory)
        if not os.path.isdir(directory):
            raise NamespaceLoadError(f"namespaces directory {directory} does not exist")
        if directory not in sys.path:
            sys.path.insert(0, directory)
        for module_name, path in _module_entries(directory):
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                where = ""
                if isinstance(exc, SyntaxError) and exc.lineno:
                    where = f" (line {exc.lineno})"
                else:
                    tb = exc.__traceback__
                    lineno = None
                    while tb is not None:
                        if os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(
                                os.path.dirname(path)):
                            lineno = tb.tb_lineno
                        tb = tb.tb_next
                    if lineno:
                        where = f" (line {lineno})"
                raise NamespaceLoadError(
                    f"cannot load namespace module {os.path.relpath(path)}{where}: "
                    f"{type(exc).__name__}: {exc}") from exc
            yield module_name, module


def load_namespaces(directories: Iterable[str]) -> list[type[Namespace]]:
    """Import every module of *directories*; return the Namespace subclasses they define.

    Each directory is put on ``sys.path`` so its modules and packages import
    by their plain names (``namespaces/chat.py`` is module ``chat``).

    :raises NamespaceLoadError: naming the file, when a module fails to import.
    """
    from .namespace import Namespace

    found: list[type[Namespace]] = []
    for module_name, module in _import_modules(directories):
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, Namespace)
                    and value is not Namespace and value.name
                    and value.__module__.split(".")[0] == module_name
                    and value not in found):
                found.append(value)
    return found


def load_blueprints(directories: Iterable[str]) -> list[Blueprint]:
    """The module-level ``blueprint`` (a :class:`flask.Blueprint`) of each module of *directories*.

    Modules are imported as :func:`load_namespaces` does (once: Python
    caches them). Modules without a ``blueprint`` are skipped.

    :raises NamespaceLoadError: naming the file, when a module fails to import.
    """
    from flask import Blueprint

    found: list[Blueprint] = []
    for _, module in _import_modules(directories):
        blueprint = getattr(module, "blueprint", None)
        if isinstance(blueprint, Blueprint) and blueprint not in found:
            found.append(blueprint)
    return found


def make_server(config: Config) -> Server:
    """The :class:`sbio.Server` that ``sbio run`` serves for *config*, not started.

    Its namespaces and blueprints are those of the modules in
    ``server.namespaces``. ``sbio.wsgi`` (gunicorn, see :mod:`sbio.gunicorn`)
    builds its server with this too.

    :raises NamespaceLoadError: naming the file, when a module fails to import.
    :raises TypeError, ValueError: a namespace that cannot be served (e.g. two
        classes with one name).
    """
    from .server import Server

    namespaces = load_namespaces(config["server"]["namespaces"])
    blueprints = load_blueprints(config["server"]["namespaces"])
    if not namespaces:
        log.warning("no Namespace subclasses found in %s",
                    ", ".join(config["server"]["namespaces"]))
    return Server(namespaces, config=config, blueprints=blueprints)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbio", description="sbio: real-time web applications on gevent and socket.io")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="serve the namespaces of a directory (default)")
    run.add_argument("--host", help="address to listen on (config server.host, 127.0.0.1)")
    run.add_argument("--port", type=int, help="port to listen on (config server.port, 8282)")
    run.add_argument("--namespaces", action="append", metavar="DIR",
                     help="directory of namespace modules; repeatable "
                          "(config server.namespaces, ./namespaces)")
    run.add_argument("--config", action="append", metavar="FILE", default=[],
                     help="extra configuration file, applied after the defaults; repeatable")
    run.add_argument("--message-queue", metavar="URL",
                     help="redis:// URL to share events with other sbio processes")
    run.add_argument("--debug", action="store_true", help="debug logging and settings")
    call = commands.add_parser(
        "call", help="call EVENT of a server; print the result as JSON",
        description="Call on_EVENT(ARG...) of a namespace and print the result as one JSON "
                    "line. Exit 0 on success, 1 on an error answer (printed as JSON on "
                    "stderr), 3 if the connection fails or is refused.")
    subscribe = commands.add_parser(
        "subscribe", help="subscribe to EVENT of a server; print each result as JSON",
        description="Subscribe to on_EVENT(ARG...) of a namespace and print the first result "
                    "and every change as JSON lines, until Ctrl-C or --count results. The "
                    "client reconnects and resubscribes by itself.")
    for command in (call, subscribe):
        command.add_argument("url", metavar="URL",
                             help="the server, e.g. http://127.0.0.1:8282/chat (the path is "
                                  "the namespace)")
        command.add_argument("event", metavar="EVENT", help="the handler on_EVENT to call")
        command.add_argument("args", nargs="*", metavar="ARG",
                             help="an argument: JSON if it parses as JSON (42, true, null, "
                                  "'{\"a\": 1}', '\"42\"'), else a string")
        command.add_argument("--namespace", metavar="NS",
                             help="the namespace, if the URL has no path (default /)")
        command.add_argument("--auth", metavar="JSON",
                             help="the handshake payload on_connect(auth) gets, as JSON")
        command.add_argument("--timeout", type=float, default=10.0, metavar="S",
                             help="seconds for the connection and the answer (default 10)")
    subscribe.add_argument("--count", type=int, default=0, metavar="N",
                           help="exit after N results (the first one counts; default: run "
                                "until Ctrl-C)")
    return parser


def _json_arg(text: str) -> Any:
    """*text* parsed as JSON if it is valid (strict: no NaN), else the string itself."""
    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        return text


def _print_json(value: Any, stream: Any = None) -> None:
    stream = sys.stdout if stream is None else stream
    stream.write(json.dumps(value, ensure_ascii=False, default=repr) + "\n")
    stream.flush()


def _print_error(error: Any) -> None:
    _print_json({"error": {"code": error.code, "message": error.message}}, sys.stderr)


def client_command(args: argparse.Namespace) -> int:
    """``sbio call`` / ``sbio subscribe``: one :class:`sbio.Client`, results as JSON lines."""
    import threading

    from .client import Client
    from .errors import ConnectionFailed, ConnectionRefused, RpcError

    logging.basicConfig(level=logging.WARNING, format="sbio: %(levelname)s %(name)s: %(message)s")
    auth = None
    if args.auth is not None:
        try:
            auth = json.loads(args.auth)
        except ValueError as exc:
            print(f"sbio: error: --auth is not JSON: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.timeout <= 0 or getattr(args, "count", 0) < 0:
        print("sbio: error: --timeout must be > 0 and --count >= 0", file=sys.stderr)
        return EXIT_USAGE
    values = [_json_arg(arg) for arg in args.args]
    try:
        client = Client(args.url, args.namespace or "/", auth=auth, timeout=args.timeout)
    except (TypeError, ValueError) as exc:
        print(f"sbio: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionRefused as exc:
        print(f"sbio: error: connection refused: {exc.message}"
              + (f" {json.dumps(exc.data)}" if exc.data is not None else ""), file=sys.stderr)
        return EXIT_CONNECTION
    except ConnectionFailed as exc:
        print(f"sbio: error: {exc}", file=sys.stderr)
        return EXIT_CONNECTION
    try:
        if args.command == "call":
            _print_json(client.call(args.event, *values))
            return EXIT_OK
        done = threading.Event()
        shown = [0]

        def show(data: Any) -> None:
            _print_json(data)
            shown[0] += 1
            if args.count and shown[0] >= args.count:
                done.set()

        client.subscribe(args.event, *values, callback=show, on_error=_print_error)
        while not done.wait(0.2):
            if client.status == "closed":
                print("sbio: error: the connection was closed"
                      + (f": refused: {client.refused.message}" if client.refused else ""),
                      file=sys.stderr)
                return EXIT_CONNECTION
        return EXIT_OK
    except RpcError as exc:
        _print_error(exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        client.close()


#: Loggers that log every packet or HTTP request at INFO or DEBUG: WARNING unless --debug.
_NOISY_LOGGERS = ("sbio.socketio", "sbio.engineio", "geventwebsocket.handler", "sbio.access.http")


def _configure_logging(logging_config: Mapping[str, Any], debug: bool) -> None:
    """Set up logging as ``[logging]`` says: the root level, then each of ``[[levels]]``.

    ``--debug`` (``server.debug``) puts the root logger at DEBUG and leaves
    the per-packet loggers (:data:`_NOISY_LOGGERS`) on; otherwise those are
    at WARNING. ``[[levels]]`` is applied last, so it wins over both.
    """
    level = str(logging_config.get("level") or "INFO").upper()
    logging.basicConfig(level=logging.DEBUG if debug else getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not debug:
        for noisy in _NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)
    for name, name_level in (logging_config.get("levels") or {}).items():
        logging.getLogger(name).setLevel(str(name_level).upper())


def run(args: argparse.Namespace) -> int:
    from .config import ConfigurationError, load_sbio_config

    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["server.host"] = args.host
    if args.port is not None:
        overrides["server.port"] = args.port
    if args.debug:
        overrides["server.debug"] = True
    if args.namespaces:
        overrides["server.namespaces"] = args.namespaces
    if args.message_queue:
        overrides["server.message_queue"] = args.message_queue
    missing = [f for f in args.config if not os.path.isfile(f)]
    if missing:
        print(f"sbio: error: configuration file {missing[0]} not found", file=sys.stderr)
        return 2
    try:
        config = load_sbio_config(extra_files=args.config, overrides=overrides)
    except ConfigurationError as exc:
        print(f"sbio: error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config["logging"], config["server"]["debug"])

    try:
        server = make_server(config)
    except (NamespaceLoadError, TypeError, ValueError) as exc:  # e.g. two classes, one namespace
        print(f"sbio: error: {exc}", file=sys.stderr)
        return 2

    import gevent

    def stop(signum: int) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        gevent.spawn(server.stop)

    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stop, signum)
    try:
        server.start()
    except OSError as exc:
        print(f"sbio: error: cannot listen on {server.host}:{server.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    except Exception as exc:
        log.debug("start-up failed", exc_info=True)
        print(f"sbio: error: start-up failed: {exc}", file=sys.stderr)
        return 1
    server.wait_stopped()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sbio`` and ``run_server`` commands."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", *_CLIENT_COMMANDS, "-h", "--help"):
        argv.insert(0, "run")
    if argv[0] not in _CLIENT_COMMANDS:
        # The server patches first, before anything imports socket, ssl or
        # threading. The clients run on plain threads: no patching.
        from gevent import monkey

        monkey.patch_all()
    args = _parser().parse_args(argv)
    if args.command in _CLIENT_COMMANDS:
        return client_command(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
