"""gunicorn configuration for imgsrv, derived from Settings and the machine.

Used by ``imgsrv serve`` as ``gunicorn -c python:imgsrv.gunicorn_conf`` (so an installed package
needs no file from the source tree) and re-exported by the repository's ``gunicorn.conf.py`` for
a plain ``gunicorn`` command. gunicorn reads the module-level names below; every other name is
ignored by it.
"""

from __future__ import annotations

import math

from imgsrv import serving
from imgsrv.config import load_settings

_settings = load_settings()

wsgi_app = serving.APP_FACTORY + "()"
bind = [serving.bind_address(_settings.host, _settings.port)]
# IMGSRV_WORKERS, or one per CPU the container may use (cgroup quota and affinity aware).
workers = _settings.worker_count
worker_class = serving.WORKER_CLASS

# Never load the app in the master: libvips starts threads when it initialises, and a child
# forked from a process whose libvips threads are running can deadlock on locks those threads
# held at fork time. Each worker imports the app (and pyvips) itself, after the fork.
preload_app = False

timeout = serving.WORKER_TIMEOUT_SECONDS
# A stopping worker first drains (readiness 503 while it still serves), then finishes.
graceful_timeout = serving.GRACEFUL_TIMEOUT_SECONDS + math.ceil(_settings.drain_delay)
keepalive = serving.KEEPALIVE_SECONDS
worker_tmp_dir = serving.worker_tmp_dir()

# The app writes one JSON line per request itself (IMGSRV_ACCESS_LOG); gunicorn's would repeat it.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
logconfig_dict = serving.logging_config(_settings.log_level)
proc_name = "imgsrv"
# gunicorn's runtime control socket sits at one path per user ($HOME/.gunicorn), which two
# instances on a host would fight over and a read-only container home cannot hold; imgsrv is
# managed with signals (TERM to stop, HUP to reload, TTIN/TTOU to resize).
control_socket_disable = True

on_starting = serving.on_starting
pre_fork = serving.pre_fork
post_fork = serving.post_fork
child_exit = serving.child_exit
on_exit = serving.on_exit
