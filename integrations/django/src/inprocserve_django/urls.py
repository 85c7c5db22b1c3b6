"""``path("-/inprocserve/", include("inprocserve_django.urls"))``"""

from django.urls import path

from . import status_page, views

app_name = "inprocserve"
urlpatterns = [
    path("health", views.health, name="health"),
    path("ready", views.ready, name="ready"),
    path("models", views.models, name="models"),
    path("status", status_page.status_page, name="status"),
]
