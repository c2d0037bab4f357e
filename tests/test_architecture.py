"""The rules of sbio's layout, checked on its source (see docs/architecture.md)."""
import ast
import pathlib
import re

import sbio

PACKAGE = pathlib.Path(sbio.__file__).resolve().parent

# Private names of python-socketio, python-engineio and gevent-websocket that
# sbio overrides or calls: only sbio/adapter.py may name them.
_PRIVATE_UPSTREAM = re.compile(
    r"\._(handle_|send_|trigger_|cors_|thread\b|listen\b|publish\b|binary_packet|get_socket)"
    r"|\beio\.sockets\b|\bread_frame\b|\bvalidate_utf8\b|\b_decode_bytes\b|__class__\b"
    r"|\brun_websocket\b|\bupgrade_connection\b")

# sbio's own private names that the pattern above would also match.
_OWN = re.compile(r"\._send_(queued|resync_request|error|ack|encoded)\b|\._handle_(request)\b")


def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "adapter.py")


def test_only_the_adapter_names_private_upstream_internals():
    hits = []
    for path in _sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PRIVATE_UPSTREAM.search(_OWN.sub("", code)):
                hits.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not hits, ("private python-socketio/engineio/gevent-websocket names outside "
                      "sbio/adapter.py:\n" + "\n".join(hits))


def test_no_module_builds_socketio_packets_by_hand():
    # A packet string starts with its type digit and, often, a namespace:
    # '2["...', '2/ns,[...', '42...'. Only the protocol module encodes them.
    pattern = re.compile(r"""["']4?[0-6](/|\[)""")
    hits = []
    for path in _sources():
        if path.name == "protocol.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line.split("#", 1)[0]):
                hits.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not hits, "hand-built socket.io packets:\n" + "\n".join(hits)


# -- one exception tree ---------------------------------------------------------------------


def test_every_sbio_exception_is_an_sbio_error_and_old_locations_still_work():
    import sbio.cli
    import sbio.config
    import sbio.errors
    import sbio.tasks

    for name in sbio.errors.__all__:
        assert issubclass(getattr(sbio.errors, name), sbio.errors.SbioError), name
    assert sbio.config.ConfigurationError is sbio.errors.ConfigurationError
    assert sbio.tasks.LifecycleError is sbio.errors.LifecycleError
    assert sbio.tasks.QueueFull is sbio.errors.QueueFull
    assert sbio.cli.NamespaceLoadError is sbio.errors.NamespaceLoadError
    assert issubclass(sbio.errors.SbioTimeoutError, TimeoutError)
    for name, module in sbio._EXPORTS.items():
        value = getattr(sbio, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert module == "sbio.errors", f"sbio.{name} should come from sbio.errors"


def test_exception_classes_are_defined_in_errors_py():
    # Private helper exceptions (a leading underscore) and subclasses of
    # RpcError (answers to a call, defined beside what raises them) may live
    # elsewhere; the adapter's MessageTooBig and ProtocolViolation are signals
    # caught inside the adapter (they close the connection), never raised out.
    allowed = {"adapter.py": {"MessageTooBig", "ProtocolViolation"}, "crud.py": {"ValidationError"},
               "clients.py": {"CallError"}}  # sbio/testing/
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") \
                    and any(_base_name(b).endswith(("Error", "Exception", "Full"))
                            for b in node.bases) \
                    and node.name not in allowed.get(path.name, ()):
                hits.append(f"{path.name}: {node.name}")
    assert not hits, "exception classes outside sbio/errors.py: " + ", ".join(hits)


def _base_name(node):
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


# -- no import cycles -------------------------------------------------------------------------


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module, level, current, is_package):
    if not level:
        return module
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph():
    """sbio module -> the sbio modules it imports (at module level or in functions)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module, node.level, name, is_package)
                found = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in found:
                # "from . import live" names a module; "from .x import y" a name in x
                while target and target not in paths:
                    target = target.rpartition(".")[0]
                if target and target != name and target != "sbio":
                    targets.add(target)
        graph[name] = targets
    return graph


def _cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    cycles = _cycles(graph)
    detail = []
    for component in cycles:
        members = set(component)
        detail.append(" <-> ".join(component) + ": " + "; ".join(
            f"{m} imports {', '.join(sorted(graph[m] & members))}" for m in component))
    assert not cycles, "import cycles in sbio:\n" + "\n".join(detail)


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# -- one version --------------------------------------------------------------------------------


def test_the_js_client_carries_the_python_version():
    # sbio/__init__.py's __version__ is the one source (pyproject.toml reads it);
    # the JS client's package.json and its VERSION constant must follow it.
    import json

    root = PACKAGE.parent
    package = json.loads((root / "static" / "package.json").read_text())
    assert package["version"] == sbio.__version__
    assert f'var VERSION = "{sbio.__version__}";' in (root / "static" / "sbio.js").read_text()


# -- typing ------------------------------------------------------------------------------------


def test_type_checkers_see_every_public_name():
    # sbio/__init__.py loads its names lazily (_EXPORTS); its `if TYPE_CHECKING:`
    # block imports the same names from the same modules, for mypy and IDEs.
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1, ast.dump(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name}: re-export it as `X as X`"
            seen[alias.name] = f"sbio.{node.module}"
    assert seen == sbio._EXPORTS


def _pyproject():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import pytest

        tomllib = pytest.importorskip("tomli")
    with open(PACKAGE.parent / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_the_package_is_marked_typed_and_ships_the_marker():
    # PEP 561: sbio/py.typed tells a project's type checker to read sbio's
    # annotations; package-data puts it in the wheel (test_packaging_wheel.py
    # checks an installed wheel has it).
    assert (PACKAGE / "py.typed").is_file()
    setuptools = _pyproject()["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["sbio"]
    assert "Typing :: Typed" in _pyproject()["project"]["classifiers"]


# Modules whose functions are not all annotated yet: the only ones mypy lets go.
_UNTYPED_MODULES = ("sbio.adapter", "sbio.dispatch")


def _matches(module, pattern):
    """Whether mypy's override *pattern* ("a.b" or "a.b.*") applies to *module*."""
    if pattern.endswith(".*"):
        return module == pattern[:-2] or module.startswith(pattern[:-1])
    return module == pattern


def test_every_module_with_functions_is_held_to_annotating_them():
    # A module in pyproject's disallow_untyped_defs override fails mypy on an
    # unannotated def: a new module goes there (or, with a reason, into
    # _UNTYPED_MODULES), so that what is typed stays typed.
    strict = [pattern for override in _pyproject()["tool"]["mypy"]["overrides"]
              if override.get("disallow_untyped_defs") for pattern in override["module"]]
    with_defs = sorted(
        _module_name(path) for path in PACKAGE.rglob("*.py")
        if any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
               for node in ast.walk(ast.parse(path.read_text()))))
    loose = [m for m in with_defs
             if not any(_matches(m, p) for p in (*strict, *_UNTYPED_MODULES))]
    assert not loose, f"add them to disallow_untyped_defs in pyproject.toml: {loose}"
    typed_now = [p for p in _UNTYPED_MODULES
                 if any(_matches(p.removesuffix(".*"), s) for s in strict)]
    assert not typed_now, f"held to annotations already, drop from _UNTYPED_MODULES: {typed_now}"
