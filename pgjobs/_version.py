"""The installed version of pgjobs; a module of its own so that anything can read it
without importing the package's facade."""

__version__ = "0.1.0"
