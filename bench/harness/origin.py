"""The static origin on 127.0.0.1 that every contender downloads sources from.

nginx when installed (it is what sits behind real image servers, and it costs the machine
least), else :mod:`bench.harness.static_origin`. Both serve the same routes:

* ``/{name}`` -> a source file;
* ``/v/{anything}/{name}`` -> the same file under a unique URL, so that every ``miss``
  request makes a server download and transform afresh (no source cache can help);
* ``/probe/{anything}`` -> ``probe.jpg``, the bytes of a cached response, which the load
  generator capacity probe fetches to show how fast the client side can go.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.harness import procs

NGINX_CONF = """\
worker_processes {workers};
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
{user}
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    open_file_cache max=64 inactive=60s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ image/jpeg jpg; image/png png; image/webp webp; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        location ^~ /probe/ {{ rewrite ^ /probe.jpg break; }}
        location ~ ^/v/[^/]+/([^/]+)$ {{ try_files /$1 =404; }}
        location / {{ }}
    }}
}}
"""


@dataclass
class Origin:
    """A running origin: its base URL, what it is, and how it was started."""

    url: str
    port: int
    kind: str
    command: str
    process: procs.Managed


def start_origin(root: Path, work: Path, prefer_nginx: bool = True) -> Origin:
    """Serve ``root`` on a free port of 127.0.0.1 with nginx if possible."""
    port = procs.free_port()
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if prefer_nginx and nginx:
        prefix = work / "nginx"
        prefix.mkdir(parents=True, exist_ok=True)
        # As root nginx would drop to "nobody", who may not read the work tree.
        user = "user root root;" if os.geteuid() == 0 else ""
        conf = prefix / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                workers=2, prefix=prefix.resolve(), user=user, port=port, root=root.resolve()
            )
        )
        argv = [nginx, "-p", str(prefix.resolve()), "-c", str(conf.resolve()), "-g", "daemon off;"]
        process = procs.spawn("origin-nginx", argv, log_path=work / "logs" / "origin.log")
        kind = "nginx"
    else:
        argv = [sys.executable, "-m", "bench.harness.static_origin", "--port", str(port)]
        argv += ["--root", str(root.resolve())]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        process = procs.spawn("origin-python", argv, env=env, log_path=work / "logs" / "origin.log")
        kind = "python"
    url = f"http://127.0.0.1:{port}"
    procs.wait_http(url + "/probe/ready", process, timeout=20)
    return Origin(url, port, kind, " ".join(argv), process)
