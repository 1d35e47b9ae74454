"""A conversation's life: intake (``manager``), one turn from history to answer (``turn``, ``prompting``,
``tables``), commands and usage limits, the relay from engine to sink, and the outbox for what a platform
did not take."""
