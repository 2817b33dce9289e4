# imgsrv: image transform HTTP server.
#   docker build -t imgsrv .
#   docker run -p 8080:8080 -e IMGSRV_SIGNING_KEY=... -e IMGSRV_SIGNING_SALT=... \
#              -e IMGSRV_REDIS_URL=redis://redis:6379/0 imgsrv
# Every setting is an IMGSRV_* variable (config/default.toml lists them), or mount a TOML file
# and set IMGSRV_CONFIG. The examples in config/ are copied to /etc/imgsrv/.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Every dependency, libvips included (pyvips-binary), comes as a wheel: no compiler, no apt.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY imgsrv ./imgsrv
RUN pip install . && rm -rf /src

COPY config/ /etc/imgsrv/

# A fixed numeric id, so that Kubernetes can check runAsNonRoot and the manifests in
# deploy/k8s can name it (runAsUser: 10001).
RUN groupadd --system --gid 10001 imgsrv \
    && useradd --system --uid 10001 --gid imgsrv --home-dir /var/lib/imgsrv --create-home \
       --shell /usr/sbin/nologin imgsrv

# glibc gives every thread that allocates its own malloc arena (up to 8 per core). libvips
# threads allocate and free large pixel buffers, and memory freed in many arenas stays mapped
# and fragmented, so RSS keeps growing under load. Two arenas bound that at a negligible cost
# in lock contention. (jemalloc via LD_PRELOAD would also do, but its library path differs per
# CPU architecture; this setting needs no extra package and works on amd64 and arm64 alike.)
ENV MALLOC_ARENA_MAX=2 \
    IMGSRV_HOST=0.0.0.0 \
    IMGSRV_PORT=8080 \
    IMGSRV_DATA_DIR=/var/lib/imgsrv

# No redis-server is installed here: give the container a shared Redis with IMGSRV_REDIS_URL
# (L2 cache, render locks, jobs). Workers default to one per CPU of the container's quota.
USER 10001:10001
WORKDIR /var/lib/imgsrv
EXPOSE 8080

# python, because the slim image has no curl.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('IMGSRV_PORT', '8080') + '/healthz', timeout=2)"]

# With several workers `imgsrv serve` execs gunicorn, which becomes PID 1, handles SIGTERM
# gracefully and reaps its workers.
ENTRYPOINT ["imgsrv", "serve"]
