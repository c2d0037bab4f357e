"""``sbio run`` (also installed as ``run_server``): serve the namespaces of a directory.

    sbio run [--host H] [--port P] [--namespaces DIR]... [--config FILE] [--debug]

Every module and package in each namespaces directory (``namespaces/`` by
default, relative to the current directory) is imported, and every
:class:`sbio.Namespace` subclass defined there with a ``name`` is hosted.
A module-level ``blueprint`` (a :class:`flask.Blueprint`) of such a module is
registered on the server's Flask app: that is how an application adds pages.
SIGINT and SIGTERM stop the server gracefully.
"""
from __future__ import annotations

import argparse
import importlib
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

__all__ = ["main", "make_server", "load_namespaces", "load_blueprints", "NamespaceLoadError"]


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
    return parser


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
    # Patch first, before anything imports socket, ssl or threading.
    from gevent import monkey

    monkey.patch_all()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "-h", "--help"):
        argv.insert(0, "run")
    args = _parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
