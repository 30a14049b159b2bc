"""secnet: the libnetwork remote-driver daemon (HTTP app, kernel work, state)."""
