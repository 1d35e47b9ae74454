"""Built-in personas, as YAML data files. Loaded by :mod:`bot.l10n.personas`."""
