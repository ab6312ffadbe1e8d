"""The real synapse-http-antispam (PyPI), under a name the native module does not take, so the
differential tests can run the Python original next to Myelin's native version."""

from synapse_http_antispam import HTTPAntispam  # noqa: F401
