"""``path("-/inprocserve/", include("inprocserve_django.urls"))``"""

from django.urls import path, re_path

from . import status_page, views

app_name = "inprocserve"
urlpatterns = [
    path("health", views.health, name="health"),
    path("ready", views.ready, name="ready"),
    path("models", views.models, name="models"),
    path("status", status_page.status_page, name="status"),
    path("reload", views.reload, name="reload"),
    path("models/<str:name>/switch", views.switch, name="switch"),
    path("models/<str:name>/rollback", views.rollback, name="rollback"),
    path("models/<str:name>/canary", views.canary, name="canary"),
    path("models/<str:name>/kill", views.kill, name="kill"),
    path("models/<str:name>/resume", views.resume, name="resume"),
    # A path that begins as one of the above and holds a control character (/-/inprocserve/models%0A,
    # models/m/switch%00): the JSON 404 of views.not_found, where Django's HTML page answered. Only those: this
    # URLconf may be included at the root, where a wider pattern (models/..., status.json) would take the
    # project's own paths.
    re_path(
        r"^(?:health|ready|models|status|reload)(?=[/\x00-\x1f\x7f])[^\x00-\x1f\x7f]*[\x00-\x1f\x7f](?s:.*)\Z",
        views.not_found,
        name="not-found",
    ),
]
