"""Adapters: one module per platform. Each turns platform events into :class:`bot.types.IncomingMessage`
and renders :data:`bot.types.ReplyEvent` values back. Adapters know nothing of the model."""
