# The sbio pytest plugin (sbio.testing) is loaded by `-p sbio.testing` in
# pytest.ini, first, so gevent is monkey-patched before other plugins import
# ssl or threading. An installed sbio also registers it as the pytest11 entry
# point "sbio.testing" for projects that use sbio.
