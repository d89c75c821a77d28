"""Example applications; `pgjobs demo` runs workers with `demo_app`."""
