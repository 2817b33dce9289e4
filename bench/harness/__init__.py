"""The benchmark harness behind ``bench/run.py``: processes, workloads, load generators, reports.

Every module here is small and does one thing; ``bench/run.py`` wires them together. Nothing
in this package is imported by the server: it drives imgsrv from the outside, as a user would.
"""
