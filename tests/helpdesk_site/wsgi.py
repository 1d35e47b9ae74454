"""WSGI entry point of the test-only django-helpdesk site, and its runner.

``python -m tests.helpdesk_site.wsgi [--host 127.0.0.1] [--port 0]`` (from the repository root, with the
environment of tests/helpdesk_site/settings.py) migrates the database, seeds it (``testhooks.seed``), binds
the port (0: a free one), prints one JSON line ``{"port", "queues", "users"}`` on stdout and serves with
Django's own threaded WSGI server (the one ``runserver`` uses, without the autoreloader). Threaded because
django-helpdesk posts webhooks synchronously inside the request that caused them: a receiver calling the REST
API back before it answers needs a second worker.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.helpdesk_site.settings")

application = get_wsgi_application()


def main() -> None:
    import argparse
    import json
    import sys

    from django.core.management import call_command
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    from tests.helpdesk_site.testhooks import seed

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    call_command("migrate", interactive=False, verbosity=0)
    server = ThreadedWSGIServer((args.host, args.port), WSGIRequestHandler, allow_reuse_address=False)
    server.daemon_threads = True
    server.set_app(application)
    port = server.server_address[1]
    print(json.dumps({"port": port, **seed(f"{args.host}:{port}")}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
