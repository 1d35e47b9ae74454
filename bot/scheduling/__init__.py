"""Who is answered next: one message at a time per conversation, fair between users (the PostgreSQL
claim scheduler for replicas lives with the PostgreSQL store)."""
