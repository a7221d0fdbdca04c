"""Where a session goes: the Router interface, nginx auth_http, and the embedded table."""
