"""gunicorn settings of the demo: each worker builds and warms its models before it accepts a connection."""

from inprocserve.gunicorn import post_worker_init  # noqa: F401 - gunicorn finds the hook by its name

worker_class = "gthread"
