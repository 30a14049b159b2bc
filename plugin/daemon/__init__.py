"""The daemon: gunicorn on the plugin's unix socket (``server``), the HTTP face
of the driver and of the CLI API (``app``, ``api``), and ``wiring``, which builds
the one object graph of the daemon, once, at start.
"""
