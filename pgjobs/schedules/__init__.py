"""Schedules (cron): `cron` is the pure maths (parsing expressions and time zones, due
fire times), `store` the operations on the `job_schedules` table that App, ops, CLI and
REST share, and `task` the maintenance task that fires due schedules into jobs. It may
import the producer and the foundation modules, never the engine or anything above it.
"""
