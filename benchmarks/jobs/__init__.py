"""Jobs: the flags the commands share, run configuration, the plan, the selection rule, executors, the scheduler and its live display."""
