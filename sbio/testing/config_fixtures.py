"""The ``sbio_config_patcher`` pytest fixture (re-exported by the sbio pytest plugin)."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from configobj import Section

from sbio.config import _has, _raw, _resolve

__all__ = ["sbio_config_patcher"]

_MISSING = object()


@pytest.fixture
def sbio_config_patcher() -> Iterator[Callable[..., Any]]:
    """Set configuration values for one test; they are restored afterwards.

    ``sbio_config_patcher(value, *path, config)``: *path* names the key, dotted
    (``"server.port"``) or in parts (``"server", "port"``); *config* is the
    mapping to patch (a :class:`sbio.config.Config` or any nested dict) and
    must be passed by keyword::

        def test_port(sbio_config_patcher):
            config = load_sbio_config()
            sbio_config_patcher(9000, "server.port", config=config)
            assert config["server.port"] == 9000

    The sections must exist (a typo raises ``KeyError``); a key that did not
    exist is removed again after the test. Patches are undone in reverse
    order, so patching one key twice restores the original value. Returns
    the previous value (None when there was none).
    """
    undo: list[Callable[[], None]] = []

    def patch(value: Any, *path: str, config: Any) -> Any:
        if not path:
            raise TypeError("sbio_config_patcher() needs the key to patch, e.g. 'server.port'")
        container = config
        for part in path[:-1]:
            container, leaf = _resolve(container, part)
            if not _has(container, leaf) or not isinstance(_raw(container, leaf), Mapping):
                raise KeyError(f"no configuration section {'.'.join(path[:-1])!r}")
            container = _raw(container, leaf)
        container, leaf = _resolve(container, path[-1])
        if container is config and isinstance(leaf, str) and "." in leaf \
                and not _has(config, leaf):
            raise KeyError(f"no configuration section for {leaf!r}")
        old = _raw(container, leaf) if _has(container, leaf) else _MISSING
        was_default = isinstance(container, Section) and leaf in container.defaults
        if isinstance(container, Section):
            Section.__setitem__(container, leaf, value)
        else:
            container[leaf] = value

        def restore() -> None:
            if old is _MISSING:
                if _has(container, leaf):
                    del container[leaf]
                return
            if isinstance(container, Section):
                Section.__setitem__(container, leaf, old)
                if was_default and leaf not in container.defaults:
                    container.defaults.append(leaf)
            else:
                container[leaf] = old

        undo.append(restore)
        return None if old is _MISSING else old

    yield patch
    for restore in reversed(undo):
        restore()
