"""The jobs dashboard the ``web`` process serves at ``/``: overview, jobs, a job's story, batches."""
