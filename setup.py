"""Packaging for sbio: a framework and server for real-time web apps on gevent and socket.io."""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


setup(
    name="sbio",
    version="0.1.0",
    description="Real-time web applications on gevent and socket.io: per-connection "
    "namespaces with ACLs, live subscriptions, daemon tasks.",
    long_description=read("README.md"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["sbio", "sbio.*"]),
    package_data={"sbio": ["configspec.ini"]},
    install_requires=[
        "gevent>=24.2",
        "gevent-websocket>=0.10.1",
        # python-socketio internals (Server._handle_event_internal and friends)
        # are overridden in sbio.dispatch: keep the major version pinned.
        "python-socketio>=5.11,<6",
        "python-engineio>=4.9,<5",
        "Flask>=3.0",
        "configobj>=5.0.8",
        "SQLAlchemy>=2.0",
    ],
    extras_require={
        "postgres": ["psycopg[binary]>=3.1"],
        "redis": ["redis>=5.0"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "python-socketio[client]>=5.11,<6",
            "websocket-client>=1.6",
            "requests>=2.31",
            "playwright>=1.40",
            "psycopg[binary]>=3.1",
            "redis>=5.0",
        ],
    },
    entry_points={
        "console_scripts": [
            "sbio=sbio.cli:main",
            "run_server=sbio.cli:main",
        ],
        "pytest11": ["sbio.testing=sbio.testing"],
    },
    classifiers=[
        "Framework :: Flask",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Server",
    ],
)
