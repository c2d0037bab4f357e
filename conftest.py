# The sbio pytest plugin (sbio.testing) is loaded by `-p sbio.testing` in
# pytest.ini, first, so gevent is monkey-patched before other plugins import
# ssl or threading. Installing sbio loads nothing into pytest: a project opts
# in the same way (`-p sbio.testing`, or `pytest_plugins = ["sbio.testing"]`).
