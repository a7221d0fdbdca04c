relaygate relays SMTP like nginx's mail proxy: auth_http or an embedded route table picks the backend, and the client gets the backend's own replies.
