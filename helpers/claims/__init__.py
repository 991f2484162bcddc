"""Claims under test and the one rule set that decides them.

    rules      the verdict ladder, the "working" threshold, intervals -> verdicts (pure functions)
    registry   every claim with a stable id (LC*, KI*, HS*) and the decider that reads its tidy frame
    board      every claim decided from the frames present, as a table or markdown

Sits above `evaluation` (it reuses its intervals) and below `experiments` and `running`, which call it.
"""
from .rules import VERDICTS, WORKING_MAX_PPL_RATIO, Verdict, is_working  # noqa: F401
