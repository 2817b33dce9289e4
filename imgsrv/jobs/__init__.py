"""Asynchronous jobs: render variants of a source ahead of time, on the sync pipeline.

``model``       the job and its public JSON shape
``submission``  checking a submission before it is queued
``scripts``     the Lua scripts: every state change is one atomic script
``queue``       the Redis queue (priority, tenant round robin, delays, leases, reaping)
``worker``      the loop that claims jobs and renders them through :mod:`imgsrv.render`
``callbacks``   signed, retried POSTs of finished jobs
``auth``        API keys -> tenants
``config``      the job settings, checked once
``errors``      the job API's problems (401, 404, 503...) in the server's error hierarchy
``openapi``     the OpenAPI 3.1 document of the API in :mod:`imgsrv.routes.jobs`
"""
