"""The IMAP and POP3 login phase: the pre-auth front, the login flow, the backend line reader."""
