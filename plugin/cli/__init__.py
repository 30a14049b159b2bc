"""The ``secnet`` command line: ``main`` (argument parsing, commands),
``client`` (HTTP over the daemon's unix socket), ``format`` (text output).
"""
