"""What every web integration needs around a :class:`~inprocserve.Server`, with no web framework in it.

The Flask and Django plug-ins are thin adapters over this module, and another integration can be too:
each turns the typed results below into its framework's responses.

* :func:`readiness` (also ``Server.readiness``): whether the server can answer, and why not, per model.
* :func:`http_status`, :func:`error_code`, :func:`error_answer`: a library error as an HTTP answer.
* :func:`run_admin_action`, :func:`admin_answer`: the admin endpoints (reload, switch, rollback, canary,
  kill, resume) with their JSON bodies checked, since they come from the network; :func:`admin_encoding_refused`:
  the 415 of a compressed admin body.
* :func:`budget_spent`: the error, recorded, for a prediction whose request spent its time budget first.
* :func:`status_page`: the status page as an HTTP answer (a 503 page where the server cannot be built);
  :func:`status_page_unauthorized`: its 401.
* :data:`ANSWER_HEADERS`, :data:`PRIVATE_ANSWER_HEADERS`: the headers of the endpoints' answers (no
  ``Content-Type``: laid over answers of every type).
* :func:`check_token`: a ``Bearer`` token (or HTTP Basic password) compared in constant time.
* :func:`environ_key`: where a request header is in a WSGI environ (and Django's ``request.META``);
  :func:`header_setting_problem`: a setting naming a header that no request can send.
* :func:`body_reader`: a request body's ``read`` whose failures (a client gone mid-upload, broken chunked
  framing) are a 400 rather than a 500; :func:`body_end_unknown`: a chunked body the WSGI server cannot end.
* :class:`ProcessLocalServer`: one lazily built server per process, rebuilt in a forked child.
* :data:`SHADOW_SETTINGS`, :func:`shadow_setting_problem`: the server's shadow arguments, their defaults
  and their checks, for settings read at start-up while the server is built later in each worker.
* :func:`model_configs_problem`: the same for its ``config=`` and ``models=``, :func:`flags_setting_problem`
  for its ``flags=``; :func:`bool_setting_problem` for an on/off setting.
* As the app loads: :func:`check_repository_at_start` (the eager start-up check, fit for a pre-fork master),
  :func:`refuse_at_start` and :func:`replacement_worker` (a worker replacing an earlier one starts past a
  repository caught mid-change), :func:`repository_layout` (models and skipped entries, no file read), and
  :func:`replace_link_advice` (a problem's advice about links given as the plug-in's setting).
* In messages: :func:`short_repr` (the ``repr`` of a value someone sent, cut short) and :func:`close_match`
  (the ``(stable?)`` of a typo).

The objects live in private submodules, one job each (``_settings``, ``_readiness``, ``_answers``, ``_admin``,
``_requests``, ``_process``, ``_pages``, ``_startup``); they are named, documented and kept here, as
``inprocserve.web.<name>`` (a function's ``__module__``; a class's names the submodule that defines it, where
``inspect.getsource`` finds it), and the submodules' names may change in any release: import and pickle
by ``inprocserve.web.<name>`` (a pickle of a class names its submodule, which a release that moves it keeps
importable).

A plug-in needs nothing else from the core: the Flask and Django plug-ins import only ``inprocserve``,
``inprocserve.web`` and ``inprocserve.v2`` (a test holds them to it), never a private ``inprocserve._...``
module, whose names may change in any release.

::

    from inprocserve import web

    holder = web.ProcessLocalServer(lambda: inprocserve.Server("models/"))
    state = holder.get().readiness()
    status, body = (200 if state.ready else 503), state.body()
"""

from __future__ import annotations

import types

from ._admin import (
    ADMIN_ACTIONS,
    ADMIN_UNAUTHORIZED,
    AdminAnswer,
    admin_answer,
    admin_encoding_refused,
    run_admin_action,
)
from ._answers import (
    ANSWER_HEADERS,
    ERROR_STATUS,
    PRIVATE_ANSWER_HEADERS,
    ErrorAnswer,
    budget_spent,
    error_answer,
    error_code,
    http_status,
    retry_after,
)
from ._pages import (
    status_page,
    status_page_unauthorized,
)
from ._process import (
    NO_SERVER,
    ProcessLocalServer,
    server_or_none,
)
from ._readiness import (
    Readiness,
    probe_readiness,
    readiness,
)
from ._readiness import _control_unknown as _control_unknown  # (private: the status page and v2 read it)
from ._requests import (
    LENGTH_REQUIRED,
    body_cut_short,
    body_end_unknown,
    body_reader,
    check_token,
    environ_key,
    header_setting_problem,
    token_problem,
)
from ._settings import (
    SECONDS_SETTINGS,
    SHADOW_SETTINGS,
    bool_setting_problem,
    flags_setting_problem,
    model_configs_problem,
    seconds_setting_problem,
    shadow_setting_problem,
)
from ._startup import (
    RepositoryLayout,
    check_repository_at_start,
    close_match,
    refuse_at_start,
    replace_link_advice,
    replacement_worker,
    repository_layout,
    short_repr,
)

__all__ = [
    "ADMIN_ACTIONS",
    "ADMIN_UNAUTHORIZED",
    "ANSWER_HEADERS",
    "AdminAnswer",
    "ERROR_STATUS",
    "ErrorAnswer",
    "LENGTH_REQUIRED",
    "NO_SERVER",
    "PRIVATE_ANSWER_HEADERS",
    "ProcessLocalServer",
    "Readiness",
    "RepositoryLayout",
    "SECONDS_SETTINGS",
    "SHADOW_SETTINGS",
    "admin_answer",
    "admin_encoding_refused",
    "body_cut_short",
    "body_end_unknown",
    "body_reader",
    "bool_setting_problem",
    "budget_spent",
    "check_repository_at_start",
    "check_token",
    "close_match",
    "environ_key",
    "error_answer",
    "error_code",
    "flags_setting_problem",
    "header_setting_problem",
    "http_status",
    "model_configs_problem",
    "probe_readiness",
    "readiness",
    "refuse_at_start",
    "replace_link_advice",
    "replacement_worker",
    "repository_layout",
    "retry_after",
    "run_admin_action",
    "seconds_setting_problem",
    "server_or_none",
    "shadow_setting_problem",
    "short_repr",
    "status_page",
    "status_page_unauthorized",
    "token_problem",
]

# Every public function is inprocserve.web's, as the docs and pickles name it: the submodules are private. A class
# keeps the module that defines it: inspect.getsource (and so help tools, debuggers, IPython's ??) reads a class's
# source from the file of the module its __module__ names, and found no class in this one (functions are found by
# their code's own file). Its pickles name that module (a class that moves keeps its old module's name importable),
# and pickles that name this one load too.
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, types.FunctionType):
        _value.__module__ = __name__
del _name, _value
