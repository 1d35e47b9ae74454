"""Operations: structured logs without secrets, Prometheus metrics."""
