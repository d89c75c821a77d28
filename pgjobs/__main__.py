"""`python -m pgjobs` runs the command line, like the `pgjobs` script."""

from pgjobs.cli import main

if __name__ == "__main__":
    main(prog_name="pgjobs")
