"""Asynchronous jobs: render variants of a source ahead of time, on the sync pipeline.

``model``       the job and its public JSON shape
``schema``      the API's requests and responses as typed models (validation and OpenAPI)
``submission``  the checks of a submission the schema cannot express (URL grammar, addresses)
``scripts``     the Lua scripts: every state change is one atomic script
``queue``       the Redis queue (priority, tenant round robin, delays, leases, reaping,
                dependencies, retry, re-prioritising, pause)
``worker``      the loop that claims jobs and renders them through :mod:`imgsrv.render`, and
                the duties of every process with the queue
``merge``       jobs of one source claimed together render from one decode
``registry``    every serving process and worker, with heartbeats
``schedules``   cron schedules that fire exactly once across processes
``services``    the queue, registry and schedules of one process
``callbacks``   signed, retried POSTs of finished jobs
``auth``        API keys -> tenants
``config``      the job settings, checked once
``errors``      the job API's problems (401, 404, 409, 503...) in the server's error hierarchy
``openapi``     the OpenAPI 3.1 document of the API in :mod:`imgsrv.routes.jobs`
"""
