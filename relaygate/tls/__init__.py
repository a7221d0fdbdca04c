"""TLS for relaygate: the front door's server contexts, verified client contexts to backends,
and the certificate facts nginx reports.
"""
