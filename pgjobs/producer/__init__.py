"""The producer side: `options` validates and builds a `NewJob`, `statements` holds the
SQL that inserts, reads, cancels and retries jobs (sync and async), `flows` plans and
creates job graphs and `dependencies` checks them for cycles and sweeps dependants of
finished jobs. It may import the built-in types' payload checks and the foundation
modules (config, db, errors, models, queries, clock, ids), nothing above them.
"""
