"""The libnetwork remote driver: typed requests (``protocol``), the verbs
(``driver``: the only writer of state), the saved state (``state``: SQLite,
typed options), published-port bindings (``ports``), and the container ->
segment resolution (``labels``: a bounded lookup at Join, Docker's events after).
"""
