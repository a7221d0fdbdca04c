"""Operations: metrics, the sessions view, health checks, the JSON access log and drain."""
