"""Settings of the test-only django-helpdesk site (see tests/helpdesk_peer.py).

Environment:
- ``HELPDESK_SITE_DB``: the SQLite file (required in practice; defaults to ``helpdesk.sqlite3`` in the cwd).
- ``HELPDESK_SITE_MEDIA``: MEDIA_ROOT, where attachments are stored (served under ``/media/`` since DEBUG).
- ``HELPDESK_SITE_MAIL``: a folder for the e-mails django-helpdesk sends (Django's file backend); when
  unset, e-mail is dropped.
- ``HELPDESK_NEW_TICKET_WEBHOOK_URLS`` / ``HELPDESK_FOLLOWUP_WEBHOOK_URLS``: read by django-helpdesk itself
  (helpdesk/settings.py) each time a webhook is due; nothing here touches them.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "test-only-not-secret"  # a throwaway site on 127.0.0.1
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",  # some staff templates link to admin pages
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "django.contrib.humanize",
    "rest_framework",
    "helpdesk",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tests.helpdesk_site.urls"
WSGI_APPLICATION = "tests.helpdesk_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.debug",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("HELPDESK_SITE_DB", "helpdesk.sqlite3"),
        # The server is threaded (a webhook receiver may call the REST API back while django-helpdesk
        # waits for its answer): WAL lets readers run beside a writer, the timeout waits out locks.
        "OPTIONS": {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
# Fast hashing: Basic auth checks the password on every REST request.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

SITE_ID = 1
LOGIN_URL = "helpdesk:login"
LOGIN_REDIRECT_URL = "helpdesk:home"

STATIC_URL = "/static/"
MEDIA_URL = "/media/"
MEDIA_ROOT = os.environ.get("HELPDESK_SITE_MEDIA", str(Path.cwd() / "helpdesk-media"))
if os.environ.get("HELPDESK_SITE_VALID_EXTENSIONS"):  # a site that narrowed django-helpdesk's default list
    HELPDESK_VALID_EXTENSIONS = os.environ["HELPDESK_SITE_VALID_EXTENSIONS"].split(",")

DEFAULT_FROM_EMAIL = "helpdesk@example.com"
SERVER_EMAIL = DEFAULT_FROM_EMAIL
if os.environ.get("HELPDESK_SITE_MAIL"):
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = os.environ["HELPDESK_SITE_MAIL"]
else:
    EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"

# django-helpdesk. Teams mode needs pinax-teams, which the peer does not install.
HELPDESK_TEAMS_MODE_ENABLED = False
# The REST API's default authentication (DRF): session + HTTP Basic, stated here so a change of default
# upstream does not silently change what the adapter is tested against.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "helpdesk": {"handlers": ["console"], "level": "INFO"},
        "django.request": {"handlers": ["console"], "level": "ERROR"},
    },
}
