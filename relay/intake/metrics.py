"""Prometheus metrics of the relay's intake and storage (delivery metrics live next to delivery code).

Names carry the ``relaybox_`` prefix and units; labels have bounded cardinality (never an address or id).
"""

from prometheus_client import Counter, Gauge

SMTP_ACCEPTED = Counter("relaybox_smtp_accepted_messages", "Messages accepted and durably queued")
SMTP_REJECTED = Counter("relaybox_smtp_rejected", "SMTP commands or messages rejected, by reason", ["reason"])
SMTP_SESSIONS = Gauge("relaybox_smtp_sessions_active", "SMTP sessions currently open",
                      multiprocess_mode="livesum")     # worker processes: the instance's total
