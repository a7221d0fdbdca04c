"""relaygate: a Twisted mail gateway for SMTP, IMAP and POP3."""
