"""Command-line plumbing shared by the tools: a bad flag, a missing file or
an unwritable output ends a tool with one line on stderr, "NAME: problem",
and a non-zero exit status, never a usage dump or a traceback."""
import argparse
import sys
from pathlib import Path


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, "NAME: problem (see --help)", exit status 2."""

    def error(self, message):
        self.exit(2, f"{Path(self.prog).stem}: {message} (see --help)\n")

    def parse_args(self, args=None, namespace=None):
        # An unknown option is named before any missing one: "--modle" is the mistake, not "--model".
        args = sys.argv[1:] if args is None else [str(a) for a in args]
        known = [s for a in self._actions for s in a.option_strings]
        for a in args:
            if a == "--":
                break
            name = a.split("=", 1)[0]
            if name.startswith("--") and not any(k.startswith(name) for k in known):
                self.error(f"unknown option '{name}'")
        return super().parse_args(args, namespace)


def int_at_least(lo):
    """An argparse type: a whole number >= lo."""

    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"'{text}' is below {lo}")
        return v

    return parse


def float_in(lo, hi):
    """An argparse type: a number in [lo, hi]."""

    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"'{text}' is outside [{lo}, {hi}]")
        return v

    return parse


def run(main, name):
    """Runs main(); a file that cannot be read or written ends it with one line naming that file."""
    try:
        main()
    except OSError as e:
        culprit = e.filename2 if e.filename2 is not None else e.filename  # a rename's target
        where = f"{culprit}: " if culprit is not None else ""
        sys.exit(f"{name}: {where}{e.strerror or e}")
