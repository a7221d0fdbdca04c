"""The SMTP front session, the backend client and the DATA stream between them."""
