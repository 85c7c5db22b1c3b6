"""gunicorn settings of the demo: each worker builds and warms its models before it accepts a connection."""

import logging
from typing import Any

from gunicorn import glogging

from inprocserve.gunicorn import post_worker_init  # noqa: F401 - gunicorn finds the hook by its name

worker_class = "gthread"


class Logger(glogging.Logger):
    """gunicorn's logger, whose error log the library's logger tree and the Flask plug-in's share.

    They have no handler of their own (a library's never do): without this, a version that fails to load, a
    control file that cannot be read or the master's repository check leave no line in gunicorn's log. Given
    the error log's handlers and level once gunicorn has set them up (at start and at each reload), their lines
    go where ``--error-logfile`` (or ``--log-syslog``) sends gunicorn's, at ``--log-level`` (the demo's
    ``warning`` keeps the models' INFO lines out of its summary), and are reopened with them on ``USR1``. Not
    propagated: a root handler (an app's, or a ``logconfig_dict``'s on stdout) would write each line again.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for name in ("inprocserve", "inprocserve_flask"):
            library = logging.getLogger(name)
            library.handlers = list(self.error_log.handlers)
            library.setLevel(self.error_log.level)
            library.propagate = False


logger_class = Logger
