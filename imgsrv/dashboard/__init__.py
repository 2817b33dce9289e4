"""The dashboard: server-rendered pages of queues, jobs, workers, schedules and traffic.

``session``  who may look (HTTP Basic with the admin key, or a signed session cookie) and the
             CSRF tokens every action carries
``pages``    the HTML of each view (escaped text, no templates, no external resources)
``static/``  the one stylesheet and the one small script (self-updating views, actions)
"""
