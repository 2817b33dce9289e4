"""gunicorn configuration for imgsrv: ``gunicorn -c gunicorn.conf.py``.

Everything lives in the installed package (imgsrv/gunicorn_conf.py, imgsrv/serving.py), so that
``imgsrv serve`` works without this file; it is here for running gunicorn by hand.
Settings come from IMGSRV_* environment variables and IMGSRV_CONFIG, as for ``imgsrv serve``.
"""

from imgsrv.gunicorn_conf import *  # noqa: F403
