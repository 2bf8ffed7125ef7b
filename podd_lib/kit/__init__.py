"""What the notebooks use and the method does not.

  session     -- `setup(...)`: one call sets a notebook up and returns a Session that runs its experiments
  studies     -- the paper's experiments as plans of cached runs, one group per notebook
  experiments -- the run cache: every result keyed by its resolved config, computed once
  tables      -- results tables: ours beside the paper's numbers, with the delta and the command
  plots       -- the notebooks' figures, saved as PNG and PDF
  report      -- results files and outputs/report.md (and .html) built from them
  explore     -- the patch explorer: one patch of a poster, its crop, soft label and class areas
  claims      -- the paper's claims, each decided from results by one stated rule
  paper       -- the numbers the paper reports, as data
"""

from .session import Session, setup

__all__ = ["Session", "setup"]
