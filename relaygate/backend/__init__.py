"""The backend connection shared by the SMTP, IMAP and POP3 fronts: policy, connect, TLS."""
