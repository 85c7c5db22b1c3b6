"""The test project's ASGI application, for servers that take an application path rather than a factory."""

from django.core.asgi import get_asgi_application

application = get_asgi_application()
