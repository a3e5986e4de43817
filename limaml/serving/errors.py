"""The scoring service's domain errors, each carrying its HTTP status; `app.py` maps them to
responses in one place (as Feast's `FeastError` subclasses carry theirs)."""

from __future__ import annotations


class ServingError(Exception):
    """A request the service cannot answer; the message says why."""

    status_code = 500


class FeatureStoreUnavailable(ServingError):
    """The online store did not answer; the request may succeed when retried."""

    status_code = 503
