"""A gunicorn worker class that runs an sbio :class:`~sbio.Server` with its lifecycle.

    gunicorn -k sbio.gunicorn.Worker -w 1 -b 127.0.0.1:8282 sbio.wsgi:app

serves, in a project directory, what ``sbio run`` serves there (see
:mod:`sbio.wsgi`); ``myapp:server`` serves your own :class:`sbio.Server`
instead (``server.wsgi_app`` works too). Each worker process runs the server
exactly as :meth:`sbio.Server.start` does, on the sockets gunicorn bound:
sbio's websocket handler and frame limits, the startup hooks, DaemonTasks and
live-data broadcasters, and on SIGTERM (gunicorn's graceful stop) the same
ordered :meth:`~sbio.Server.stop` as ``sbio run``, within
``server.shutdown_timeout``. Keep that below gunicorn's ``--graceful-timeout``
(30 s by default), after which gunicorn kills the worker.

One worker per process (``-w 1``): socket.io's long-polling needs every request
of a client to reach the same process, and each worker would run its own
DaemonTasks. To use several cores, run several gunicorn processes on Redis
behind a load balancer with sticky sessions (docs/scaling.md).

Not supported, and refused or ignored: TLS in gunicorn (terminate it in the
proxy), ``--preload`` (the app would be built before gevent's monkey-patching),
``--max-requests`` and ``--worker-connections`` (sbio's own limits apply);
the access log is sbio's ``sbio.access`` and ``sbio.access.http`` loggers, not
``--access-logfile``.

Importing this module imports gunicorn's gevent worker, nothing of sbio's
server: gunicorn's master process imports the worker class before it forks.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import gevent
from gunicorn.workers.ggevent import GeventWorker

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Worker"]

#: gunicorn's arbiter stops (instead of respawning workers) on this exit code.
_WORKER_BOOT_ERROR = 3


class Worker(GeventWorker):
    """gunicorn's gevent worker, serving an :class:`sbio.Server` through
    :meth:`~sbio.Server.start`."""

    #: the :class:`sbio.Server` this worker runs (set when gunicorn loads the app)
    sbio_server: Server | None = None

    def load_wsgi(self) -> None:
        super().load_wsgi()  # after gevent's monkey-patching (GeventWorker.init_process)
        from .server import Server

        app = self.wsgi
        server = app if isinstance(app, Server) else getattr(app, "__self__", None)
        if not isinstance(server, Server):
            raise TypeError(
                "sbio.gunicorn.Worker serves an sbio.Server: give gunicorn sbio.wsgi:app "
                f"or module:attr naming your own Server, not {app!r}")
        if self.cfg.is_ssl:
            raise ValueError("sbio.gunicorn.Worker does not do TLS: terminate it in the proxy "
                             "(nginx) in front of gunicorn")
        if self.cfg.workers > 1:
            self.log.warning(
                "sbio.gunicorn.Worker with %d workers per gunicorn process: the kernel spreads "
                "the connections among them, so long-polling clients fail and every worker "
                "runs its own DaemonTasks; run several gunicorn processes with -w 1 on Redis "
                "instead (docs/scaling.md)", self.cfg.workers)
        self.sbio_server = server

    def run(self) -> None:
        server = self.sbio_server
        assert server is not None, "gunicorn calls load_wsgi() before run()"
        for sock in self.sockets:
            sock.setblocking(True)
        try:
            server.start(listeners=self.sockets)
        except Exception:
            self.log.exception("the sbio server failed to start")
            sys.exit(_WORKER_BOOT_ERROR)
        try:
            while self.alive and server.started:  # SIGTERM (handle_exit) clears alive
                self.notify()
                gevent.sleep(1.0)
        finally:
            self.log.info("stopping the sbio server (pid: %s)", self.pid)
            beat = gevent.spawn(self._heartbeat)  # the arbiter must not think we hang
            try:
                server.stop()
            finally:
                beat.kill()

    def _heartbeat(self) -> None:
        while True:
            self.tmp.notify()  # Worker.notify, without GeventWorker's exit on a new parent
            gevent.sleep(1.0)
