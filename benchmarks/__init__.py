"""The commands (`python -m benchmarks.<command>`) and their library: jobs/, tables/, timing/ (docs/architecture.md).

Run as a command, this package takes SIGINT and SIGTERM for the seconds its imports last (torch, the tasks):
a Ctrl-C there is one line and exit 130 (143 for SIGTERM), not a KeyboardInterrupt traceback."""
import os
import signal
import sys
import time

ENV_PAUSE_AT = "RNNREG_PAUSE_AT"  # core.interrupt.ENV_PAUSE_AT (not imported: core imports torch): "startup" waits here


def _stop_while_starting(signum, frame):
    """Until the command's module has run its imports (its main() is defined), nothing was written: say so and
    stop; after that, Python's own handling, which the commands replace with core.interrupt's where they write."""
    if not hasattr(sys.modules.get("__main__"), "main"):
        sys.stderr.write(f"stopped by {signal.Signals(signum).name} while starting (importing torch and the "
                         "tasks): nothing was written\n")
        os._exit(128 + signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


if sys.argv[:1] == ["-m"]:  # `python -m benchmarks.<command>` while Python imports this package (not pytest's)
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, _stop_while_starting)
    if os.environ.get(ENV_PAUSE_AT) == "startup":
        print("paused at startup", flush=True)
        while True:  # until the signal the test sends ends the process
            time.sleep(0.05)
