"""E2E fixtures: a real Label Studio (see labelstudio_server.py)."""
from tests.e2e.labelstudio_server import label_studio  # noqa: F401  (re-exported as a fixture)
