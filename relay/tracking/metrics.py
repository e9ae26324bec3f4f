"""Prometheus metrics of the tracking listener (first opens per recipient are counted from the events table
by admin_api.event_metrics). Labels are bounded: never a token, address or id."""

from prometheus_client import Counter

REQUESTS = Counter("relaybox_tracking_requests", "Requests to the tracking listener by kind (open, click, "
                   "other) and outcome (accepted, invalid, limited, dropped, ignored)", ["kind", "result"])
RECORDED = Counter("relaybox_tracking_hits", "Tracking hits written, by kind and who (human, machine, "
                   "unknown = no such recipient any more)", ["kind", "who"])
DROPPED = Counter("relaybox_tracking_dropped", "Valid hits dropped because the write queue was full")
