"""Maintenance: the periodic tasks one worker per installation leads (an advisory lock
per task): the stager (delayed → pending), the rescuer (expired leases), the pruner
(finished jobs past retention), the dependency sweep and the cron task. It may import
the producer, schedules and the foundation modules, never the engine's worker or
anything above the engine.
"""
