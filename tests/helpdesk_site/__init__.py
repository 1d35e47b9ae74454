"""A minimal Django project running the real django-helpdesk, as a peer for the helpdesk adapter's tests.

Started in a subprocess by ``tests/helpdesk_peer.py`` (``python -m tests.helpdesk_site.wsgi``); nothing here is
imported by the framework itself.
"""
