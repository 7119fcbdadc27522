"""Planning runs for accelerators this machine does not have (launch/plan.py): target names and
chip specs (targets), model architectures by name (architectures), the pipeline's programs
compiled ahead of time from abstract shapes (programs, pipeline) and the report (report)."""
