# Loads the sbio pytest plugin for this repository even when sbio is not
# installed (an installed sbio registers it through its pytest11 entry point).
import importlib.metadata

try:
    importlib.metadata.distribution("sbio")
except importlib.metadata.PackageNotFoundError:
    pytest_plugins = ["sbio.testing"]
