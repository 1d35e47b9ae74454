"""PostgreSQL: the store for replicas (``store``) and the claim scheduler that shares its database (``claims``)."""
