"""Layered, validated configuration built on configobj.

:func:`parse_config` gives an application package its configuration;
:func:`load_sbio_config` gives sbio's own (what the server and the CLI use).
Both read the same layers, later ones winning, files that do not exist
skipped:

1. the defaults of the package's ``configspec.ini``;
2. ``/etc/sbio/<name>.ini`` (the directory is ``$SBIO_CONFIG_ROOT`` when set);
3. ``<root>/development-defaults.ini``;
4. ``<root>/development.ini`` (local, not committed);
5. the *extra_files*, in order (``sbio run --config FILE``; these must exist);
6. environment variables ``<NAME>_<SECTION>__<KEY>``;
7. *overrides* (dotted keys, e.g. from command-line flags).

The result is validated against the configspec; every problem is reported at
once in a :class:`ConfigurationError`. Nothing is parsed at import time.
See docs/configuration.md for the user-facing description.
"""
import csv
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

from configobj import ConfigObj, ConfigObjError, Section, get_extra_values

try:  # configobj >= 5.0.8 ships validate inside the package
    from configobj import validate as _validate
except ImportError:  # pragma: no cover - older configobj
    import validate as _validate

from sbio.errors import ConfigurationError, SbioError  # noqa: F401  (old location)

__all__ = ["Config", "ConfigurationError", "parse_config", "load_sbio_config", "section_defaults",
           "SBIO_CONFIGSPEC"]

log = logging.getLogger(__name__)

#: Environment variable naming the directory of the system-wide files
#: (``<dir>/<name>.ini``); ``/etc/sbio`` when unset or empty.
CONFIG_ROOT_ENV = "SBIO_CONFIG_ROOT"
DEFAULT_CONFIG_ROOT = "/etc/sbio"

#: sbio's own configspec.
SBIO_CONFIGSPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configspec.ini")

# Checks whose value is a list: a string from an environment variable or an
# override is split on commas for these.
_LIST_CHECKS = frozenset({
    "list", "tuple", "string_list", "int_list", "float_list", "bool_list",
    "ip_addr_list", "mixed_list", "force_list",
})
# Checks that also accept a single value as a one-element list (configobj
# reads "key = a" as the string "a" and "key = a, b" as a list).
_SINGLE_AS_LIST = ("list", "string_list", "int_list", "float_list", "bool_list", "ip_addr_list")

_EXPECTED = {
    "integer": "an integer",
    "float": "a number",
    "boolean": "a boolean: true/false, yes/no, on/off, 1/0",
    "string": "a string",
    "ip_addr": "an IPv4 address",
    "list": "a list",
    "tuple": "a list",
    "string_list": "a list of strings",
    "int_list": "a list of integers",
    "float_list": "a list of numbers",
    "bool_list": "a list of booleans",
    "ip_addr_list": "a list of IPv4 addresses",
    "mixed_list": "a list",
    "log_level": "a level name",
}

#: *extra_files*: one path or several.
FilesArg = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]

_INTERPOLATION = re.compile(r"%(?:(%)|\(([^)]*)\)s)")
_AT_LINE = re.compile(r"\s*at line \d+\.?$")


# --------------------------------------------------------------------------
# dotted keys

def _has(mapping: Any, key: Any) -> bool:
    return dict.__contains__(mapping, key) if isinstance(mapping, dict) else key in mapping


def _raw(mapping: Any, key: Any) -> Any:
    return dict.__getitem__(mapping, key) if isinstance(mapping, dict) else mapping[key]


def _resolve(mapping: Any, key: Any) -> tuple[Any, Any]:
    """``(container, leaf)`` for a possibly dotted *key* in nested *mapping*.

    A key present as written wins; otherwise the first dot whose left part
    names a sub-mapping splits it (so ``"loggers.sbio.live"`` finds the key
    ``"sbio.live"`` of section ``loggers``). Never raises: a key that matches
    nothing resolves to itself at the top level.
    """
    if not isinstance(key, str) or "." not in key or _has(mapping, key):
        return mapping, key
    dot = key.find(".")
    while dot >= 0:
        head = key[:dot]
        if _has(mapping, head):
            sub = _raw(mapping, head)
            if isinstance(sub, Mapping):
                return _resolve(sub, key[dot + 1:])
        dot = key.find(".", dot + 1)
    return mapping, key


def _section_path(section: Any) -> tuple[str, ...]:
    path: list[str] = []
    while isinstance(section, Section) and section.parent is not section:
        path.append(section.name)
        section = section.parent
    return tuple(reversed(path))


class Config(ConfigObj):
    """A validated configuration: a :class:`configobj.ConfigObj` whose top level
    also accepts dotted keys.

    ``config["db.url"]`` is ``config["db"]["url"]``; ``"db.url" in config`` and
    ``config.get("db.url", default)`` work the same way, and so does
    assignment. A key that exists as written (a top-level ``"a.b"``) wins over
    the dotted reading. Sections (``config["db"]``) are plain configobj
    sections without dotted access.
    """

    def __init__(self) -> None:
        super().__init__(interpolation=False)
        self._sources: dict[tuple[str, ...], str] = {}

    def __getitem__(self, key: str) -> Any:
        container, leaf = _resolve(self, key)
        try:
            if container is self:
                return ConfigObj.__getitem__(self, leaf)
            return container[leaf]
        except KeyError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        container, leaf = _resolve(self, key)
        return _has(container, leaf)

    def __setitem__(self, key: str, value: Any, unrepr: bool = False) -> None:
        container, leaf = _resolve(self, key)
        if container is self:
            ConfigObj.__setitem__(self, leaf, value, unrepr)
        else:
            container[leaf] = value

    def get(self, key: str, default: Any = None) -> Any:
        """``self[key]`` (dotted keys allowed), or *default* when missing."""
        try:
            return self[key]
        except KeyError:
            return default

    def source(self, key: str) -> str | None:
        """Where the loaded value of *key* came from, for diagnostics.

        A file path, ``"environment variable NAME"``, ``"overrides"``,
        ``"configspec default"``, ``"computed"`` (``root``, ``module_root``),
        or None for a key added after loading.
        """
        container, leaf = _resolve(self, key)
        path = (*_section_path(container), leaf)
        if path in self._sources:
            return self._sources[path]
        if isinstance(container, Section) and leaf in container.defaults:
            return "configspec default"
        return None


# --------------------------------------------------------------------------
# reading files

def _syntax_error(path: str, exc: Exception) -> ConfigurationError:
    problems = getattr(exc, "errors", None) or [exc]
    entries = []
    for problem in problems:
        reason = _AT_LINE.sub("", str(problem)) or type(problem).__name__
        line = getattr(problem, "line_number", None)
        entries.append((line, reason))
    errors = [(f"{path}, line {line}" if line else path, reason) for line, reason in entries]
    if len(entries) == 1:
        line, reason = entries[0]
        where = f"{path}, line {line}" if line else path
        return ConfigurationError(f"syntax error in {where}: {reason}", errors)
    lines = [f"  line {line}: {reason}" if line else f"  {reason}" for line, reason in entries]
    return ConfigurationError(
        f"{len(entries)} syntax errors in {path}:\n" + "\n".join(lines), errors)


def _read_ini(path: str, spec: bool = False) -> ConfigObj:
    """Parse one ini file (no interpolation, no validation)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ConfigurationError(
            f"cannot read configuration file {path}: not UTF-8 (byte {e.start})",
            [(path, "not UTF-8")]) from None
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigurationError(
            f"cannot read configuration file {path}: {reason}", [(path, reason)]) from None
    try:
        if spec:
            return ConfigObj(lines, list_values=False, _inspec=True, interpolation=False)
        return ConfigObj(lines, interpolation=False)
    except ConfigObjError as e:
        raise _syntax_error(path, e) from None


# --------------------------------------------------------------------------
# building the layered config

def _put(section: Any, key: str, value: Any) -> None:
    """Set *key* in *section*, replacing a value by a section or vice versa."""
    if dict.__contains__(section, key) and (
            isinstance(dict.__getitem__(section, key), Section) != isinstance(value, Mapping)):
        Section.__delitem__(section, key)
    Section.__setitem__(section, key, value)


def _subsection(section: Any, name: str) -> Any:
    if not isinstance(dict.get(section, name), Section):
        _put(section, name, {})
    return dict.__getitem__(section, name)


def _merge(config: "Config", target: Any, mapping: Mapping[str, Any], origin: str,
           path: tuple[str, ...] = ()) -> None:
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            _merge(config, _subsection(target, key), value, origin, (*path, key))
        else:
            if isinstance(value, tuple):
                value = list(value)
            _put(target, key, value)
            where = (*path, key)
            config._sources[where] = origin


def _spec_section(spec: Any, path: Iterable[str]) -> Any:
    for name in path:
        if spec is None:
            return None
        if name in spec.sections:
            spec = spec[name]
        elif "__many__" in spec.sections:
            spec = spec["__many__"]
        else:
            return None
    return spec


def _check_name(check: str | None) -> str | None:
    match = re.match(r"\s*([A-Za-z_]\w*)", check or "")
    return match.group(1) if match else None


def _spec_check(spec: Any, path: Iterable[str], key: str) -> str | None:
    section = _spec_section(spec, path)
    if section is None:
        return None
    if key in section.scalars:
        return section[key]
    if "__many__" in section.scalars:
        return section["__many__"]
    return None


def _split_list(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; double quotes protect commas; empty -> []."""
    items = next(csv.reader([text], skipinitialspace=True), [])
    return [item.strip() for item in items if item.strip()]


def _coerce_for_check(value: Any, check: str | None) -> Any:
    if isinstance(value, str) and _check_name(check) in _LIST_CHECKS:
        return _split_list(value)
    return value


def _match_name(candidates: Iterable[str], name: str) -> str:
    lowered = name.lower()
    for candidate in candidates:
        if candidate.lower() == lowered and candidate != "__many__":
            return candidate
    return lowered


def _env_entries(env_prefix: str, spec: Any, environ: Mapping[str, str]
                 ) -> Iterator[tuple[tuple[str, ...], str, Any, str]]:
    """``(path, key, value, origin)`` for each ``<PREFIX>_<SECTION>__<KEY>`` variable."""
    prefix = env_prefix + "_"
    for var in sorted(environ):
        if not var.startswith(prefix) or "__" not in var[len(prefix):]:
            continue
        parts = var[len(prefix):].split("__")
        if not all(parts):
            log.debug("ignoring environment variable %s: empty section or key", var)
            continue
        path: list[str] = []
        for part in parts[:-1]:
            section = _spec_section(spec, path)
            path.append(_match_name(section.sections if section is not None else (), part))
        section = _spec_section(spec, path)
        key = _match_name(section.scalars if section is not None else (), parts[-1])
        value = _coerce_for_check(environ[var], _spec_check(spec, path, key))
        yield tuple(path), key, value, f"environment variable {var}"


def _apply_overrides(config: "Config", spec: Any, overrides: Mapping[str, Any]) -> None:
    for dotted, value in overrides.items():
        if value is None:
            continue
        container, leaf = _resolve(config, dotted)
        if container is config and "." in leaf and not dict.__contains__(config, leaf):
            *sections, leaf = leaf.split(".")
            for name in sections:
                container = _subsection(container, name)
        path = _section_path(container)
        if isinstance(value, Mapping):
            _merge(config, _subsection(container, leaf), value, "overrides", (*path, leaf))
            continue
        if isinstance(value, tuple):
            value = list(value)
        _put(container, leaf, _coerce_for_check(value, _spec_check(spec, path, leaf)))
        where = (*path, leaf)
        config._sources[where] = "overrides"


# --------------------------------------------------------------------------
# interpolation: %(name)s looks name up in the value's section, then in the
# enclosing sections up to the top level (where root and module_root live);
# %% is a literal %.

class _InterpolationProblem(Exception):
    pass


def _find_for_interpolation(section: Any, name: str) -> tuple[Any, Any]:
    while True:
        if dict.__contains__(section, name):
            value = dict.__getitem__(section, name)
            if not isinstance(value, Section):
                return section, value
        if section.parent is section:
            raise KeyError(name)
        section = section.parent


def _interpolate(section: Any, value: Any, pending: Callable[[Any, str], bool],
                 trail: frozenset[tuple[int, str]]) -> Any:
    if isinstance(value, list):
        return [_interpolate(section, item, pending, trail) for item in value]
    if not isinstance(value, str) or "%" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return "%"
        name = match.group(2)
        try:
            owner, raw = _find_for_interpolation(section, name)
        except KeyError:
            raise _InterpolationProblem(
                f'unknown name in "%({name})s" (write %% for a literal %)') from None
        mark = (id(owner), name)
        if mark in trail:
            raise _InterpolationProblem(f'"%({name})s" refers back to itself')
        if pending(owner, name):
            raw = _interpolate(owner, raw, pending, trail | {mark})
        if isinstance(raw, list):
            return ", ".join(str(item) for item in raw)
        return str(raw)

    return _INTERPOLATION.sub(replace, value)


def _scalars(section: Any, path: tuple[str, ...] = ()
             ) -> Iterator[tuple[Any, tuple[str, ...], str]]:
    for key in section.scalars:
        yield section, path, key
    for name in section.sections:
        yield from _scalars(dict.__getitem__(section, name), (*path, name))


def _interpolate_all(config: "Config", pending: Callable[[Any, str], bool],
                     report: Callable[[tuple[str, ...], str], None]) -> None:
    updates = []
    for section, path, key in _scalars(config):
        if not pending(section, key):
            continue
        value = dict.__getitem__(section, key)
        try:
            new = _interpolate(section, value, pending, frozenset({(id(section), key)}))
        except _InterpolationProblem as e:
            report((*path, key), str(e))
            continue
        if new != value:
            updates.append((section, key, new))
    # Written back only once everything is computed, so a value is never
    # interpolated twice.
    for section, key, new in updates:
        dict.__setitem__(section, key, new)


# --------------------------------------------------------------------------
# validation

def _single_as_list(check: Callable[..., Any]) -> Callable[..., Any]:
    def accept_single(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            value = [value] if value.strip() else []
        return check(value, *args, **kwargs)
    return accept_single


#: The names ``log_level()`` accepts, in any case (a configspec check of sbio's own).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(value: Any) -> str:
    """The check ``log_level()``: a logging level name, in any case; gives it upper case."""
    if not isinstance(value, str):
        raise _validate.VdtTypeError(value)
    name = value.strip().upper()
    if name not in LOG_LEVELS:
        raise _validate.VdtValueError(value)
    return name


@lru_cache(maxsize=1)
def _validator() -> Any:
    validator = _validate.Validator()
    for name in _SINGLE_AS_LIST:
        validator.functions[name] = _single_as_list(validator.functions[name])
    validator.functions["log_level"] = _log_level
    return validator


def _check_shape(section: Any, spec: Any, path: tuple[str, ...],
                 report: Callable[[tuple[str, ...], str], None]) -> None:
    """Report (and drop) sections given as values and values given as sections.

    configobj's own validation crashes on both.
    """
    for name in spec.sections:
        if name != "__many__" and dict.__contains__(section, name) \
                and not isinstance(dict.__getitem__(section, name), Section):
            report((*path, name), "expected a section, got a single value")
            Section.__delitem__(section, name)
    for name in spec.scalars:
        if name not in ("__many__", "___many___") \
                and isinstance(dict.get(section, name), Section):
            report((*path, name), "expected a single value, got a section")
            Section.__delitem__(section, name)
    for name in list(section.sections):
        sub_spec = _spec_section(spec, (name,))
        if sub_spec is not None:
            _check_shape(dict.__getitem__(section, name), sub_spec, (*path, name), report)


def _bound(args: Any, kwargs: Any, name: str, position: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


def _describe(error: Any, check: str | None) -> str:
    if error is False:
        return "missing (required, the configspec has no default)"
    message = str(error).rstrip(".")
    try:
        fun, args, kwargs, _default = _validator()._parse_with_caching(check)
    except Exception:  # a broken check: validate's own message says it
        return message
    if isinstance(error, _validate.VdtTypeError) and fun in _EXPECTED:
        return f"{message} (expected {_EXPECTED[fun]})"
    if isinstance(error, _validate.VdtValueTooSmallError):
        return f"{message} (minimum {_bound(args, kwargs, 'min', 0)})"
    if isinstance(error, _validate.VdtValueTooBigError):
        return f"{message} (maximum {_bound(args, kwargs, 'max', 1)})"
    if isinstance(error, _validate.VdtValueTooShortError):
        return f"{message} (at least {_bound(args, kwargs, 'min', 0)} items)"
    if isinstance(error, _validate.VdtValueTooLongError):
        return f"{message} (at most {_bound(args, kwargs, 'max', 1)} items)"
    if isinstance(error, _validate.VdtValueError) and fun == "option":
        return f"{message} (expected one of: {', '.join(args)})"
    if isinstance(error, _validate.VdtValueError) and fun == "log_level":
        return f"{message} (expected a level: {', '.join(LOG_LEVELS)}, in any case)"
    return message


def _flatten(results: Any, spec: Any, path: tuple[str, ...] = ()
             ) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(path, error)`` for each failure in configobj's validation results."""
    if results is True or spec is None:
        return
    if results is False:
        # A section no layer mentioned, whose values all failed: these are
        # the required values (no default) of its spec.
        for key in spec.scalars:
            if key in ("__many__", "___many___"):
                continue
            try:
                _validator().get_default_value(spec[key])
            except (KeyError, _validate.ValidateError):
                yield (*path, key), False
        for key in spec.sections:
            if key != "__many__":
                yield from _flatten(False, spec[key], (*path, key))
        return
    for key, value in results.items():
        if isinstance(value, dict) or (value is False and key in spec.sections):
            yield from _flatten(value, _spec_section(spec, (key,)), (*path, key))
        elif value is not True:
            yield (*path, key), value


# --------------------------------------------------------------------------
# public entry points

def _package_of(requesting_file_path: str | os.PathLike[str]) -> tuple[str, str, str]:
    """``(name, module_root, root)`` for a file (or directory) of a package."""
    path = os.path.abspath(os.fspath(requesting_file_path))
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    while os.path.isfile(os.path.join(directory, "__init__.py")):
        parent = os.path.dirname(directory)
        if parent == directory or not os.path.isfile(os.path.join(parent, "__init__.py")):
            break
        directory = parent
    return os.path.basename(directory), directory, os.path.dirname(directory)


def _load(name: str, module_root: str, root: str, spec_path: str,
          extra_files: FilesArg = (), overrides: Mapping[str, Any] | None = None,
          environ: Mapping[str, str] | None = None) -> "Config":
    environ = os.environ if environ is None else environ
    if isinstance(extra_files, (str, bytes, os.PathLike)):
        extra_files = [extra_files]

    spec = None
    if os.path.isfile(spec_path):
        spec = _read_ini(spec_path, spec=True)
    else:
        log.debug("%s: no configspec at %s, values are not validated", name, spec_path)

    config = Config()
    for key, value in (("root", root), ("module_root", module_root)):
        _put(config, key, value)
        config._sources[(key,)] = "computed"

    system_dir = environ.get(CONFIG_ROOT_ENV) or DEFAULT_CONFIG_ROOT
    for file in (os.path.join(system_dir, f"{name}.ini"),
                 os.path.join(root, "development-defaults.ini"),
                 os.path.join(root, "development.ini")):
        if os.path.isfile(file):
            log.debug("%s: reading %s", name, file)
            _merge(config, config, _read_ini(file), file)
        else:
            log.debug("%s: no %s, skipped", name, file)
    for extra in extra_files:
        file = os.path.abspath(os.fspath(extra))
        if not os.path.exists(file):
            raise ConfigurationError(
                f"configuration file not found: {file}", [(file, "not found")])
        log.debug("%s: reading %s", name, file)
        _merge(config, config, _read_ini(file), file)

    env_prefix = re.sub(r"\W", "_", name).upper()
    for path, key, value, origin in _env_entries(env_prefix, spec, environ):
        target = config
        for section in path:
            target = _subsection(target, section)
        _put(target, key, value)
        where = (*path, key)
        config._sources[where] = origin
    if overrides:
        _apply_overrides(config, spec, overrides)

    # root and module_root are computed, whatever a layer said.
    for key, value in (("root", root), ("module_root", module_root)):
        _put(config, key, value)
        config._sources[(key,)] = "computed"

    problems: dict[tuple[str, ...], str] = {}

    def report(path: tuple[str, ...], problem: str) -> None:
        problems.setdefault(path, problem)

    computed = {"root", "module_root"}
    _interpolate_all(config, lambda s, k: not (s is config and k in computed), report)

    if spec is not None:
        _check_shape(config, spec, (), report)
        config.configspec = spec
        results = config.validate(_validator(), preserve_errors=True)
        for path, error in _flatten(results, spec):
            if path not in problems:
                report(path, _describe(error, _spec_check(spec, path[:-1], path[-1])))
        # Defaults filled in by validation may use %(root)s too.
        _interpolate_all(config, lambda s, k: k in s.defaults, report)

    if problems:
        lines = []
        errors = []
        for path, problem in problems.items():
            key = ".".join(path)
            errors.append((key, problem))
            set_in = config._sources.get(path)
            lines.append(f"  {key}: {problem}" + (f"; set in {set_in}" if set_in else ""))
        count = f"{len(errors)} errors" if len(errors) > 1 else "1 error"
        raise ConfigurationError(
            f"invalid configuration for {name} ({count}):\n" + "\n".join(lines), errors)

    if spec is not None:
        for path, key in get_extra_values(config):
            if not path and key in computed:
                continue
            where = (*path, key)
            log.debug("%s: unknown configuration key %s (%s)", name, ".".join(where),
                      config._sources.get(where, "section"))
    return config


def parse_config(requesting_file_path: str | os.PathLike[str], extra_files: FilesArg = (),
                 overrides: Mapping[str, Any] | None = None) -> Config:
    """The validated configuration of the package that *requesting_file_path* is in.

    Call it as ``config = parse_config(__file__)`` from any module of the
    package. The package is the top-level package holding the file (walking
    up while the parent directory has an ``__init__.py``), or the file's
    directory when it is not in a package; a directory may be given instead
    of a file. Then:

    - ``name`` is the package directory's name (``ragnarok``);
    - ``module_root`` is the package directory, where ``configspec.ini`` is;
    - ``root`` is its parent, where ``development.ini`` is looked for.

    Layers, later wins, missing files skipped: configspec defaults,
    ``$SBIO_CONFIG_ROOT/<name>.ini`` (``/etc/sbio/<name>.ini``),
    ``<root>/development-defaults.ini``, ``<root>/development.ini``,
    *extra_files* (which must exist), environment variables
    ``<NAME>_<SECTION>__<KEY>``, then *overrides* (``{"db.url": "..."}``;
    None values are ignored). ``root`` and ``module_root`` are set at the top
    level and usable as ``%(root)s`` in values.

    :returns: a :class:`Config`.
    :raises ConfigurationError: a file cannot be read or parsed, or values do
        not validate (all problems listed at once).
    """
    name, module_root, root = _package_of(requesting_file_path)
    return _load(name, module_root, root, os.path.join(module_root, "configspec.ini"),
                 extra_files, overrides)


@lru_cache(maxsize=1)
def _sbio_spec_defaults() -> Config:
    config = Config()
    config.configspec = _read_ini(SBIO_CONFIGSPEC, spec=True)
    config.validate(_validator())
    return config


def section_defaults(section: str) -> dict[str, Any]:
    """The defaults of ``[section]`` in sbio's ``configspec.ini``, validated (a new dict).

    For what is built without a configuration (``Cluster(url)``,
    ``LiveData(server)``, ``RedisLocks(url)``): the configspec stays the one
    place a default is written. Reads only the configspec (no files, no
    environment), once per process.

    :raises KeyError: the configspec has no such section.
    """
    return dict(_sbio_spec_defaults()[section])


def load_sbio_config(extra_files: FilesArg = (),
                     overrides: Mapping[str, Any] | None = None) -> Config:
    """sbio's own validated configuration, as the server and the CLI use it.

    Like :func:`parse_config` for the package ``sbio`` (``SBIO_*`` environment
    variables, ``/etc/sbio/sbio.ini``, sbio's ``configspec.ini``), except that
    ``root`` is the current working directory, the project ``sbio run`` is
    started in: ``development-defaults.ini`` and ``development.ini`` are read
    from there. *overrides* maps dotted keys to values and wins over every
    other layer, e.g. ``{"server.port": 9000}`` from command-line flags; None
    values are ignored, so unset flags can be passed as they are.
    """
    module_root = os.path.dirname(SBIO_CONFIGSPEC)
    return _load("sbio", module_root, os.getcwd(), SBIO_CONFIGSPEC, extra_files, overrides)
