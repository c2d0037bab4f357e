import os
import sys

# The bundled application's namespaces import as plain modules (`import chat`),
# as `sbio run` imports them.
NAMESPACES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "namespaces")
if NAMESPACES_DIR not in sys.path:
    sys.path.insert(0, NAMESPACES_DIR)
