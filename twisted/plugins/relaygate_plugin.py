"""The twistd plugin entry: ``twistd relaygate`` names ``relaygate.tap`` lazily."""

from twisted.application.service import ServiceMaker

relaygate = ServiceMaker(
    "relaygate",
    "relaygate.tap",
    "SMTP, IMAP and POP3 gateway: TLS front door, auth_http routing, relay to backends",
    "relaygate",
)
