"""django-helpdesk at ``/`` (its REST API is part of ``helpdesk.urls``, under ``/api/``), attachments under
``/media/`` (Django serves them only because DEBUG is on), and the test-only hooks under ``/test/``."""

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path

from tests.helpdesk_site import testhooks

urlpatterns = [
    path("admin/", admin.site.urls),
    path("test/customer-followup/", testhooks.customer_followup),
    path("test/customer-ticket/", testhooks.customer_ticket),
    path("test/kb-item/", testhooks.kb_item),
    path("", include("helpdesk.urls", namespace="helpdesk")),
    *static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT),
]
