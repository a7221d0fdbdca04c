"""Where a session goes: the Router interface, nginx auth_http over treq, and the embedded table."""
