"""The user's language: message catalogs (``locales``), language detection, personas."""
