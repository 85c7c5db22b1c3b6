"""gunicorn settings of the demo: each worker builds and warms its models before it accepts a connection."""

from inprocserve.gunicorn import post_worker_init  # noqa: F401 - gunicorn finds the hook by its name

worker_class = "gthread"

# The library's logger tree, and the Flask plug-in's, have no handler of their own (a library's never do):
# without this, a version that fails to load, a control file that cannot be read or the master's repository
# check leave no line in gunicorn's log. Given gunicorn's error-log handler (stderr), each process logs in
# gunicorn's format; "propagate": False, or gunicorn's root handler writes each line again, on stdout
# (docs/operations.md, "Under gunicorn").
logconfig_dict = {
    "loggers": {
        name: {"handlers": ["error_console"], "level": "INFO", "propagate": False}
        for name in ("inprocserve", "inprocserve_flask")
    }
}
