"""The spool: enqueue, claim with a lease, complete, admin moves, crash recovery (``spool.py``) and the
retry schedule (``retry.py``, a pure function)."""
