"""Development tooling, not needed to run jobs: `services` (finding or starting a
PostgreSQL and a Redis for development and tests), `demo` (`pgjobs demo`) and `bench`
(`pgjobs bench`). Only the CLI's dev commands (and `python -m pgjobs.dev.services`)
import it; it may import anything below the CLI.
"""
