"""Handing a conversation to a person: the desk (modes, held messages), the notifiers that tell people, and
the phrases that ask for one."""
