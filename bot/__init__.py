"""internvl-bot: a local InternVL vision-language model behind the chat tools people already use."""

from __future__ import annotations

__version__ = "0.1.0"
