"""The commands (`python -m benchmarks.<command>`) and their library: jobs/, tables/, timing/ (docs/architecture.md).

Run as a command, this package takes SIGINT and SIGTERM until the command takes them over: a Ctrl-C while torch
and the tasks are imported, while the command checks its flags and folders, or anywhere in a command that has no
handling of its own (speed, compare, mc), is one line and exit 130 (143 for SIGTERM), not a KeyboardInterrupt
traceback."""
import os
import signal
import sys
import time

ENV_PAUSE_AT = "RNNREG_PAUSE_AT"  # core.interrupt.ENV_PAUSE_AT (not imported: core imports torch): "startup" waits here


def _stop_while_starting(signum, frame):
    """Until the command takes signals over (core.interrupt, where it trains or writes tables), a signal stops the
    process at once with one line: nothing is half-written (every write lands whole or not at all)."""
    name = signal.Signals(signum).name
    if hasattr(sys.modules.get("__main__"), "main"):  # the command's module has run its imports
        sys.stderr.write(f"stopped by {name}: no file is half-written (each write lands whole or not at all); run "
                         "the command again to continue\n")
    else:
        sys.stderr.write(f"stopped by {name} while starting (importing torch and the tasks): nothing was written\n")
    os._exit(128 + signum)


if sys.argv[:1] == ["-m"]:  # `python -m benchmarks.<command>` while Python imports this package (not pytest's)
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, _stop_while_starting)
    if os.environ.get(ENV_PAUSE_AT) == "startup":
        print("paused at startup", flush=True)
        while True:  # until the signal the test sends ends the process
            time.sleep(0.05)
