"""sbio.config: layers, environment variables, validation errors, dotted access."""
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from sbio.config import (
    SBIO_CONFIGSPEC,
    Config,
    ConfigurationError,
    load_sbio_config,
    parse_config,
)
from sbio.errors import SbioError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

APP_SPEC = """
[server]
port = integer(min=0, max=65535, default=8000)
debug = boolean(default=False)
ratio = float(default=0.5)
hosts = string_list(default=list("a"))
url = string(default="%(root)s/data.db")
level = option("DEBUG", "INFO", default="INFO")
[db]
url = string(default="sqlite:///app.db")
"""


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No stray SBIO_*/MYAPP_* variables; /etc/sbio replaced by an empty temp dir."""
    for var in list(os.environ):
        if var.startswith(("SBIO_", "MYAPP_")):
            monkeypatch.delenv(var)
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.setenv("SBIO_CONFIG_ROOT", str(etc))
    return etc


@pytest.fixture
def app(tmp_path):
    """A package ``myapp`` in ``<tmp>/proj`` with a configspec; returns its __init__.py."""
    init = write(tmp_path / "proj" / "myapp" / "__init__.py", "")
    write(tmp_path / "proj" / "myapp" / "configspec.ini", APP_SPEC)
    return init


def errors_of(excinfo):
    return dict(excinfo.value.errors)


# --------------------------------------------------------------------------
# root, module_root, name

def test_root_and_module_root(app, tmp_path):
    config = parse_config(str(app))
    assert config["module_root"] == str(tmp_path / "proj" / "myapp")
    assert config["root"] == str(tmp_path / "proj")
    assert isinstance(config, Config)


def test_subpackage_file_uses_top_level_package(app, tmp_path, monkeypatch):
    sub = write(tmp_path / "proj" / "myapp" / "sub" / "__init__.py", "")
    models = write(tmp_path / "proj" / "myapp" / "sub" / "models.py", "")
    monkeypatch.setenv("MYAPP_SERVER__PORT", "1234")
    for path in (models, sub, models.parent):
        config = parse_config(path)
        assert config["module_root"] == str(tmp_path / "proj" / "myapp")
        assert config["server.port"] == 1234  # env prefix MYAPP from the top-level name


def test_namespaces_dir_without_init_is_not_a_package(tmp_path, monkeypatch):
    init = write(tmp_path / "namespaces" / "ragnarok" / "__init__.py", "")
    write(tmp_path / "namespaces" / "ragnarok" / "configspec.ini",
          '[db]\nurl = string(default="sqlite:///r.db")\n')
    monkeypatch.setenv("RAGNAROK_DB__URL", "postgresql://x/r")
    config = parse_config(init)
    assert config["root"] == str(tmp_path / "namespaces")
    assert config["db.url"] == "postgresql://x/r"


def test_file_outside_a_package_uses_its_directory(tmp_path):
    script = write(tmp_path / "tool" / "run.py", "")
    write(tmp_path / "tool" / "configspec.ini", "[a]\nb = integer(default=1)\n")
    config = parse_config(script)
    assert config["module_root"] == str(tmp_path / "tool")
    assert config["a.b"] == 1


def test_no_configspec_means_no_validation(tmp_path):
    init = write(tmp_path / "proj" / "bare" / "__init__.py", "")
    write(tmp_path / "proj" / "development.ini", "[x]\ny = 3\n")
    assert parse_config(init)["x.y"] == "3"


# --------------------------------------------------------------------------
# layers

LAYERS = ["default", "etc", "development-defaults", "development", "extra", "env", "override"]


@pytest.mark.parametrize("top", range(len(LAYERS)), ids=LAYERS)
def test_precedence(app, tmp_path, clean_env, monkeypatch, top):
    """Each layer beats every earlier one (layers 1..top all set the port)."""
    proj = tmp_path / "proj"
    files = {
        1: clean_env / "myapp.ini",
        2: proj / "development-defaults.ini",
        3: proj / "development.ini",
        4: tmp_path / "extra.ini",
    }
    extra, overrides = [], None
    for layer in range(1, top + 1):
        port = 8000 + layer
        if layer in files:
            write(files[layer], f"[server]\nport = {port}\n")
            if layer == 4:
                extra = [files[4]]
        elif layer == 5:
            monkeypatch.setenv("MYAPP_SERVER__PORT", str(port))
        elif layer == 6:
            overrides = {"server.port": port}
    config = parse_config(app, extra_files=extra, overrides=overrides)
    assert config["server"]["port"] == 8000 + top
    expected_source = {
        0: "configspec default", 5: "environment variable MYAPP_SERVER__PORT", 6: "overrides",
    }.get(top) or str(files[top])
    assert config.source("server.port") == expected_source


def test_layers_merge_key_by_key(app, tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    write(proj / "development-defaults.ini", "[server]\nport = 1\ndebug = true\n")
    write(proj / "development.ini", "[server]\nport = 2\n[db]\nurl = sqlite:///dev.db\n")
    monkeypatch.setenv("MYAPP_DB__URL", "sqlite:///env.db")
    config = parse_config(app)
    assert config["server"]["port"] == 2
    assert config["server"]["debug"] is True
    assert config["db"]["url"] == "sqlite:///env.db"
    assert config["server"]["ratio"] == 0.5


def test_several_extra_files_later_wins(app, tmp_path):
    a = write(tmp_path / "a.ini", "[server]\nport = 1\nratio = 2\n")
    b = write(tmp_path / "b.ini", "[server]\nport = 3\n")
    config = parse_config(app, extra_files=[a, b])
    assert (config["server.port"], config["server.ratio"]) == (3, 2.0)
    assert parse_config(app, extra_files=str(a))["server.port"] == 1  # one path, not a list


def test_missing_extra_file_is_an_error(app, tmp_path):
    missing = tmp_path / "nope.ini"
    with pytest.raises(ConfigurationError, match=f"configuration file not found: {missing}"):
        parse_config(app, extra_files=[missing])


def test_unreadable_file_is_an_error(app, tmp_path):
    (tmp_path / "proj" / "development.ini").write_bytes(b"[server]\nport = \xff\n")
    with pytest.raises(ConfigurationError, match=r"development\.ini: not UTF-8"):
        parse_config(app)


def test_sbio_config_root(app, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "myapp.ini", "[server]\nport = 4444\n")
    monkeypatch.setenv("SBIO_CONFIG_ROOT", str(elsewhere))
    config = parse_config(app)
    assert config["server.port"] == 4444
    assert config.source("server.port") == str(elsewhere / "myapp.ini")


# --------------------------------------------------------------------------
# environment variables

def test_env_values_are_typed_by_the_spec(app, monkeypatch):
    monkeypatch.setenv("MYAPP_SERVER__PORT", "9000")
    monkeypatch.setenv("MYAPP_SERVER__DEBUG", "yes")
    monkeypatch.setenv("MYAPP_SERVER__RATIO", "0.25")
    monkeypatch.setenv("MYAPP_SERVER__HOSTS", "x.org, y.org")
    server = parse_config(app)["server"]
    assert server["port"] == 9000 and type(server["port"]) is int
    assert server["debug"] is True
    assert server["ratio"] == 0.25
    assert server["hosts"] == ["x.org", "y.org"]


@pytest.mark.parametrize("raw, expected", [
    ("one", ["one"]),
    ("one,", ["one"]),
    ("", []),
    ('"a,b", c', ["a,b", "c"]),
])
def test_env_lists(app, monkeypatch, raw, expected):
    monkeypatch.setenv("MYAPP_SERVER__HOSTS", raw)
    assert parse_config(app)["server.hosts"] == expected


def test_env_string_with_comma_stays_a_string(app, monkeypatch):
    monkeypatch.setenv("MYAPP_DB__URL", "postgresql://h1,h2/db")
    assert parse_config(app)["db.url"] == "postgresql://h1,h2/db"


def test_env_names(app, monkeypatch):
    monkeypatch.setenv("MYAPP_server__Port", "1")          # section/key case does not matter
    monkeypatch.setenv("MYAPP_EXTRA__THING", "x")          # unknown key: kept as a string
    monkeypatch.setenv("MYAPP_NOSECTIONKEY", "x")           # no "__": ignored
    monkeypatch.setenv("MYAPP_A____B", "x")                 # empty part: ignored
    monkeypatch.setenv("OTHERAPP_SERVER__PORT", "2")        # another package's
    config = parse_config(app)
    assert config["server.port"] == 1
    assert config["extra"] == {"thing": "x"}
    assert "nosectionkey" not in config and "a" not in config


def test_sbio_server_port_from_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SBIO_SERVER__PORT", "9000")
    monkeypatch.setenv("SBIO_SERVER__CORS_ALLOWED_ORIGINS", "*")
    config = load_sbio_config()
    assert config["server.port"] == 9000
    assert config["server.cors_allowed_origins"] == ["*"]
    assert "config_root" not in config  # SBIO_CONFIG_ROOT has no "__": not a key


# --------------------------------------------------------------------------
# interpolation

def test_root_interpolation_in_files_and_spec_defaults(app, tmp_path):
    proj = tmp_path / "proj"
    write(proj / "development.ini", """
        name = app
        [db]
        url = sqlite:///%(root)s/%(name)s.db
        pct = 100%%
        lit = %%(asctime)s
        mod = %(module_root)s
    """)
    config = parse_config(app)
    assert config["db.url"] == f"sqlite:///{proj}/app.db"
    assert config["db.pct"] == "100%"
    assert config["db.lit"] == "%(asctime)s"
    assert config["db.mod"] == str(proj / "myapp")
    assert config["server.url"] == f"{proj}/data.db"  # from the configspec default


def test_interpolation_errors(app, tmp_path):
    write(tmp_path / "proj" / "development.ini", """
        [db]
        url = %(nope)s
        a = %(b)s
        b = %(a)s
    """)
    with pytest.raises(ConfigurationError) as excinfo:
        parse_config(app)
    errors = errors_of(excinfo)
    assert errors["db.url"] == 'unknown name in "%(nope)s" (write %% for a literal %)'
    assert "refers back to itself" in errors["db.a"]


# --------------------------------------------------------------------------
# errors

def test_configuration_error_is_an_sbio_error_and_a_value_error():
    assert issubclass(ConfigurationError, SbioError)
    assert issubclass(ConfigurationError, ValueError)


def test_bad_type(app, monkeypatch):
    monkeypatch.setenv("MYAPP_SERVER__PORT", "abc")
    with pytest.raises(ConfigurationError) as excinfo:
        parse_config(app)
    assert str(excinfo.value) == (
        "invalid configuration for myapp (1 error):\n"
        '  server.port: the value "abc" is of the wrong type (expected an integer);'
        " set in environment variable MYAPP_SERVER__PORT"
    )
    assert excinfo.value.errors == [
        ("server.port", 'the value "abc" is of the wrong type (expected an integer)')]


@pytest.mark.parametrize("key, value, problem", [
    ("port", "70000", 'the value "70000" is too big (maximum 65535)'),
    ("port", "-1", 'the value "-1" is too small (minimum 0)'),
    ("debug", "maybe",
     'the value "maybe" is of the wrong type '
     '(expected a boolean: true/false, yes/no, on/off, 1/0)'),
    ("ratio", "lots", 'the value "lots" is of the wrong type (expected a number)'),
    ("level", "LOUD", 'the value "LOUD" is unacceptable (expected one of: DEBUG, INFO)'),
])
def test_bad_values(app, tmp_path, key, value, problem):
    dev = write(tmp_path / "proj" / "development.ini", f"[server]\n{key} = {value}\n")
    with pytest.raises(ConfigurationError) as excinfo:
        parse_config(app)
    assert f"  server.{key}: {problem}; set in {dev}" in str(excinfo.value)
    assert errors_of(excinfo) == {f"server.{key}": problem}


def test_all_errors_at_once(app, tmp_path, monkeypatch):
    write(tmp_path / "proj" / "development.ini", """
        [server]
        port = 99999
        debug = maybe
        [db]
        url = %(missing)s
    """)
    monkeypatch.setenv("MYAPP_SERVER__RATIO", "x")
    with pytest.raises(ConfigurationError) as excinfo:
        parse_config(app)
    message = str(excinfo.value)
    assert message.startswith("invalid configuration for myapp (4 errors):\n")
    assert set(errors_of(excinfo)) == {"server.port", "server.debug", "server.ratio", "db.url"}
    assert len(message.splitlines()) == 5
    for key in ("server.port", "server.debug", "server.ratio", "db.url"):
        assert f"\n  {key}: " in message


def test_missing_required_value(tmp_path):
    init = write(tmp_path / "proj" / "req" / "__init__.py", "")
    write(tmp_path / "proj" / "req" / "configspec.ini",
          "[auth]\ntoken = string\n[db]\nurl = string\nsize = integer(default=1)\n")
    with pytest.raises(ConfigurationError) as excinfo:
        parse_config(init)
    assert errors_of(excinfo) == {
        "auth.token": "missing (required, the configspec has no default)",
        "db.url": "missing (required, the configspec has no default)",
    }


def test_section_given_as_value_and_value_given_as_section(app, tmp_path):
    write(tmp_path / "proj" / "development.ini", """
        db = sqlite://
        [server]
        [[port]]
        x = 1
    """)
    with pytest.raises(ConfigurationError) as excinfo:
        parse_config(app)
    assert errors_of(excinfo) == {
        "db": "expected a section, got a single value",
        "server.port": "expected a single value, got a section",
    }


def test_syntax_error_names_file_and_line(app, tmp_path):
    dev = write(tmp_path / "proj" / "development.ini", "[server]\nport = 1\nthis is not ini\n")
    with pytest.raises(ConfigurationError) as excinfo:
        parse_config(app)
    assert str(excinfo.value) == (
        f"syntax error in {dev}, line 3: "
        "Invalid line ('this is not ini') (matched as neither section nor keyword)")
    assert excinfo.value.errors == [(f"{dev}, line 3", "Invalid line ('this is not ini') "
                                     "(matched as neither section nor keyword)")]


def test_several_syntax_errors(app, tmp_path):
    dev = write(tmp_path / "proj" / "development.ini", "junk\n[server]\nport = 1\nport = 2\n[bad\n")
    with pytest.raises(ConfigurationError) as excinfo:
        parse_config(app)
    message = str(excinfo.value)
    assert message.startswith(f"3 syntax errors in {dev}:\n")
    assert "\n  line 1: Invalid line ('junk')" in message
    assert "\n  line 4: Duplicate keyword name" in message
    assert "\n  line 5: Invalid line ('[bad')" in message


def test_syntax_error_in_configspec(tmp_path):
    init = write(tmp_path / "proj" / "broken" / "__init__.py", "")
    spec = write(tmp_path / "proj" / "broken" / "configspec.ini", "[a\n")
    with pytest.raises(ConfigurationError, match=f"syntax error in {spec}, line 1"):
        parse_config(init)


def test_unknown_keys_are_allowed_and_logged(app, tmp_path, caplog):
    dev = write(tmp_path / "proj" / "development.ini",
                "[server]\nport = 1\ncolour = blue\n[plugins]\nx = 1\n")
    with caplog.at_level(logging.DEBUG, logger="sbio.config"):
        config = parse_config(app)
    assert config["server.colour"] == "blue"
    assert config["plugins.x"] == "1"
    assert f"myapp: unknown configuration key server.colour ({dev})" in caplog.messages
    assert "myapp: unknown configuration key plugins (section)" in caplog.messages
    assert not any(m.startswith(("myapp: unknown configuration key root ",
                                 "myapp: unknown configuration key module_root "))
                   for m in caplog.messages)


# --------------------------------------------------------------------------
# dotted access

def test_dotted_access(app, tmp_path):
    write(tmp_path / "proj" / "development.ini", """
        top.level = literal
        [loggers]
        sbio.live = DEBUG
    """)
    config = parse_config(app)
    assert config["db.url"] == config["db"]["url"] == "sqlite:///app.db"
    assert "db.url" in config and "db" in config
    assert "db.nope" not in config and "nope.url" not in config
    assert config.get("db.url") == "sqlite:///app.db"
    assert config.get("db.nope", 7) == 7
    assert config["top.level"] == "literal"          # a key spelled with a dot wins
    assert config["loggers.sbio.live"] == "DEBUG"    # dotted key inside a section
    with pytest.raises(KeyError, match=r"db\.nope"):
        config["db.nope"]
    config["db.url"] = "sqlite://"
    assert config["db"]["url"] == "sqlite://"
    config["db.new"] = 1
    assert config["db"]["new"] == 1


# --------------------------------------------------------------------------
# load_sbio_config

def test_load_sbio_config_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_sbio_config()
    assert config["root"] == str(tmp_path)
    assert config["module_root"] == os.path.dirname(SBIO_CONFIGSPEC)
    assert dict(config["server"]) == {
        "host": "127.0.0.1",
        "port": 8282,
        "debug": False,
        "cors_allowed_origins": [],
        "max_message_size": 1000000,
        "ping_interval": 25.0,
        "ping_timeout": 20.0,
        "namespaces": ["namespaces"],
        "static_dir": "static",
        "static_node_modules": ["socket.io-client/dist/socket.io.min.js",
                                "socket.io-client/dist/socket.io.min.js.map"],
        "security_headers": True,
        "templates_dir": "templates",
        "secret_key": "",
        "message_queue": "",
        "tcp_nodelay": True,
        "shutdown_timeout": 10.0,
        "max_attachments": 10,
        "connect_timeout": 45.0,
        "max_outbound_messages": 10000,
        "max_outbound_bytes": 16000000,
        "http_timeout": 10.0,
        "max_connections": 0,
        "max_calls_in_flight": 256,
        "rate_limit": 0.0,
        "rate_limit_burst": 100,
        "rate_limit_close_after": 1000,
        "max_json_depth": 64,
    }
    assert dict(config["broadcaster"]) == {"pool_size": 100, "timeout": 10.0,
                                           "max_subscriptions": 1000,
                                           "max_subscription_bytes": 250000,
                                           "max_delta_bytes": 1000000, "max_watches": 1000,
                                           "watch_queue": 100,
                                           "metrics_log_interval": 60.0}
    assert dict(config["db"]) == {"url": "sqlite:///sbio.db", "pool_size": 20}
    assert dict(config["logging"]) == {"level": "INFO", "access": "connections",
                                       "access_rate": 100.0, "levels": {}}


def test_load_sbio_config_reads_the_working_directory(tmp_path, monkeypatch, clean_env):
    write(clean_env / "sbio.ini", "[server]\nhost = 0.0.0.0\nport = 1\n")
    write(tmp_path / "development.ini", "[server]\nport = 2\n")
    monkeypatch.chdir(tmp_path)
    config = load_sbio_config()
    assert (config["server.host"], config["server.port"]) == ("0.0.0.0", 2)


def test_load_sbio_config_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SBIO_SERVER__PORT", "1")
    extra = write(tmp_path / "prod.ini", "[server]\ndebug = true\n")
    config = load_sbio_config(
        extra_files=[extra],
        overrides={"server.port": 9000, "server.host": None, "server.namespaces": "a, b",
                   "db": {"url": "sqlite://"}})
    assert config["server.port"] == 9000
    assert config["server.host"] == "127.0.0.1"  # None: not given
    assert config["server.debug"] is True
    assert config["server.namespaces"] == ["a", "b"]
    assert config["db.url"] == "sqlite://"


def test_load_sbio_config_overrides_are_validated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as excinfo:
        load_sbio_config(overrides={"server.port": 70000, "server.max_message_size": 10})
    assert str(excinfo.value) == (
        "invalid configuration for sbio (2 errors):\n"
        '  server.port: the value "70000" is too big (maximum 65535); set in overrides\n'
        '  server.max_message_size: the value "10" is too small (minimum 1024); set in overrides'
    )


def test_single_value_for_a_list_in_a_file(tmp_path, monkeypatch):
    write(tmp_path / "development.ini", "[server]\nnamespaces = apps\ncors_allowed_origins =\n")
    monkeypatch.chdir(tmp_path)
    config = load_sbio_config()
    assert config["server.namespaces"] == ["apps"]
    assert config["server.cors_allowed_origins"] == []


# --------------------------------------------------------------------------
# config_patcher

def test_config_patcher_sets_values(sbio_config_patcher, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_sbio_config()
    assert sbio_config_patcher(9000, "server.port", config=config) == 8282
    sbio_config_patcher(True, "server", "debug", config=config)
    assert config["server.port"] == 9000 and config["server"]["debug"] is True
    plain = {"a": {"b": 1}}
    sbio_config_patcher(2, "a.b", config=plain)
    assert plain == {"a": {"b": 2}}
    with pytest.raises(KeyError):
        sbio_config_patcher(1, "nosection.key", config=config)
    with pytest.raises(KeyError):
        sbio_config_patcher(1, "nosection", "key", config=config)


def test_sbio_config_patcher_restores_after_the_test(tmp_path):
    """Runs a small test session: values come back after each test."""
    write(tmp_path / "test_patched.py", """
        from sbio._fixtures_config import sbio_config_patcher
        from sbio.config import load_sbio_config

        CONFIG = load_sbio_config()
        PLAIN = {"a": {"b": 1}}

        def test_patch(sbio_config_patcher):
            sbio_config_patcher(1, "server.port", config=CONFIG)
            sbio_config_patcher(2, "server.port", config=CONFIG)
            sbio_config_patcher("x", "server.new_key", config=CONFIG)
            sbio_config_patcher(5, "a", "b", config=PLAIN)
            assert CONFIG["server.port"] == 2

        def test_restored():
            assert CONFIG["server.port"] == 8282
            assert "server.new_key" not in CONFIG
            assert "port" in CONFIG["server"].defaults
            assert PLAIN == {"a": {"b": 1}}
    """)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_patched.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_section_defaults_are_the_configspecs_and_objects_without_config_use_them(tmp_path):
    # The configspec is the one source of defaults: what is built without a
    # configuration gets exactly what a configuration without files would hold.
    import sbio.config as config_module
    from sbio.cluster import Cluster, RedisBus, RedisLocks
    from sbio.config import section_defaults

    env = {"SBIO_CONFIG_ROOT": str(tmp_path)}  # no /etc/sbio/sbio.ini either
    loaded = config_module._load("sbio", os.path.dirname(SBIO_CONFIGSPEC), str(tmp_path),
                               SBIO_CONFIGSPEC, environ=env)
    for section in ("cluster", "broadcaster", "server", "db"):
        assert section_defaults(section) == dict(loaded[section]), section
    first = section_defaults("cluster")
    first["prefix"] = "changed"
    assert section_defaults("cluster")["prefix"] == loaded["cluster"]["prefix"]
    with pytest.raises(KeyError):
        section_defaults("no-such-section")

    url = "redis://127.0.0.1:6379/15"
    cluster = Cluster(url)
    assert cluster.settings == dict(loaded["cluster"])
    assert cluster.locks.ttl == loaded["cluster"]["lock_ttl"]
    assert cluster.bus.max_pending == loaded["cluster"]["max_pending"]
    assert RedisBus(url).channel == f"{loaded['cluster']['prefix']}:live"
    assert RedisLocks(url).ttl == loaded["cluster"]["lock_ttl"]
    assert Cluster(url, {"lock_ttl": 3.0}).locks.ttl == 3.0

    from sbio.live import LiveData

    live = LiveData(server=None)
    assert live.pool_size == loaded["broadcaster"]["pool_size"]
    assert live.timeout == loaded["broadcaster"]["timeout"]
    assert live.max_subscriptions == loaded["broadcaster"]["max_subscriptions"]
    assert live.max_subscription_bytes == loaded["broadcaster"]["max_subscription_bytes"]
    assert live.metrics_log_interval == loaded["broadcaster"]["metrics_log_interval"]
    assert LiveData(None, {"max_subscriptions": 3}).max_subscriptions == 3
