"""`volumectl web`: a live page of the whole fleet (hosts, volumes, backups, policies, what happens), read-only.

It connects to NATS as one identity (a reader is enough: it sends no command), reads the fleet whole and follows
it (`follower`), aggregates it on the server (`model`, `activity`) and serves the page and its views (`server`),
on 127.0.0.1:8080 unless told otherwise (`access` says when another address is refused).
"""
