"""gunicorn's default config file: ``gunicorn app:app`` from the repo root picks it up.

The settings live in the package (``relay/gunicorn_conf.py``) so that ``relay serve``
finds them wherever it runs (``-c python:relay.gunicorn_conf``), installed or not.
"""

from relay.gunicorn_conf import *  # noqa: F403
from relay.gunicorn_conf import child_exit  # noqa: F401 - hooks must be module attributes
