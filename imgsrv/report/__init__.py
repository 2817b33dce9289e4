"""``imgsrv report``: the review of a month (or of a date range) in Markdown, with a PNG chart.

The numbers come from Prometheus (:mod:`imgsrv.report.from_prometheus`: everything, for any
period Prometheus still holds) or, without one, from the monthly counters every instance
keeps in Redis (:mod:`imgsrv.report.from_redis`: requests, hit ratios, transform time and
egress per day; job outcomes and queue waits need Prometheus). :mod:`imgsrv.report.review`
holds the figures and writes the Markdown, :mod:`imgsrv.report.chart` draws the chart with
libvips, which imgsrv already has, rather than with a plotting library the server would
otherwise never need.
"""
