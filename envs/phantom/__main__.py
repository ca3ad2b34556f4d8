"""``python -m envs.phantom``: the command line of :mod:`envs.phantom.cli`."""

from envs.phantom.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
