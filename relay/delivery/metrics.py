"""Prometheus metrics only the delivery engine knows (results per recipient are counted from the events
table by admin_api.event_metrics). Labels are bounded: never a domain, address or id."""

from prometheus_client import Counter, Gauge, Histogram

# with worker processes (relaybox/workers.py) a gauge of the instance is the sum over the live workers,
# except destinations down: each worker parks its own, the instance shows the most any worker has
IN_FLIGHT = Gauge("relaybox_delivery_in_flight_recipients",
                  "Recipients claimed by the scheduler, not yet recorded", multiprocess_mode="livesum")
TRANSACTIONS_ACTIVE = Gauge("relaybox_delivery_transactions_active", "SMTP delivery transactions in progress",
                            multiprocess_mode="livesum")
DESTINATIONS_DOWN = Gauge("relaybox_delivery_destinations_down",
                          "Destinations parked because none of their hosts could be reached",
                          multiprocess_mode="livemax")
PARKED = Counter("relaybox_delivery_parked_recipients",
                 "Claimed recipients handed back until their parked destination's next probe")
TRANSACTION_SECONDS = Histogram("relaybox_delivery_transaction_seconds",
                                "Duration of one delivery attempt, connect (or reuse) to final reply",
                                ["kind"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
REQUEUED = Counter("relaybox_delivery_requeued_recipients",
                   "Claimed recipients handed back without an attempt (destination backlog full, shutdown)")
UNRECORDED = Gauge("relaybox_delivery_unrecorded_recipients",
                   "Results of finished transactions waiting for the store to accept writes again",
                   multiprocess_mode="livesum")
