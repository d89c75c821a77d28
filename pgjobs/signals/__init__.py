"""Signals between processes: `wakeup` (LISTEN/NOTIFY and Redis wake-ups for idle
workers), `events` (job lifecycle events, published by workers and consumed by
`app.events()` / `app.wait()`), `listen` (the reconnecting LISTEN loop both use)
and `redis_client` (the optional Redis: clients, key
names, the outage breaker and a reconnecting subscriber). It may import only the
foundation modules (config, db, errors, queries, backoff), never the engine or above.
"""
