"""What every ``imagineq`` command's exit status means (one rule for all of them):

- 0: everything asked for was done. A batch whose good lines were all accepted (and, with ``--wait``,
  all stored) exits 0 even when bad lines were reported: they are in its report and manifest.
- 1: work that was accepted did not succeed: a job or a batch line ended failed, expired or canceled, a
  wait timed out, a job or batch named was not found, or a service failed while it ran.
- 2: the input or the configuration was unusable, and nothing was done: bad arguments, a file with no
  good line, invalid settings, a service that cannot be reached.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
