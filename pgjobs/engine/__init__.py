"""The engine: what runs jobs once they are in the table.

`worker` claims jobs and runs them, `executor` calls one handler and turns its return
or exception into an outcome, `completer` writes outcomes back in batches and
`maintenance` holds the background tasks (stager, rescuer, pruner, dependency sweep,
cron). The `JobContext` a handler receives is defined below the engine, in
`pgjobs.context`. The engine may import the producer, schedules, signals,
`pgjobs.limits` and the foundation modules (config, db, errors, models, queries,
clock, ...); it never imports the App facade, ops, web, cli or dev: the App hands it
what it needs (settings, clock, a handler registry) as arguments.
"""
