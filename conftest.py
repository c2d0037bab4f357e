# The sbio pytest plugin (sbio.testing) is loaded by `-p sbio.testing` in
# pytest.ini; it monkey-patches gevent in its first hook, before any conftest
# is imported. Installing sbio loads nothing into pytest, and importing
# sbio.testing patches nothing: a project opts in the same way (`-p
# sbio.testing`, or `pytest_plugins = ["sbio.testing"]`).
