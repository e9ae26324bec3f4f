"""Transitional: the spool's read side moved to ``store.history`` (``store.history.History``).

Only ``redact_transcript`` is still imported from here (by ``admin_api/routes_routes.py``); once that
import names ``store.history``, delete this module.
"""

from store.history import redact_transcript

__all__ = ["redact_transcript"]
