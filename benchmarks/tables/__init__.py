"""Tables: merging runs into results/, rendering task, cross-task, selection and speed tables, and the statistics they print. Imports nothing of benchmarks.jobs."""
