"""Launched by a real launcher (tests/launch.py reads what it gives a rank): writes this rank's
environment to $LFBM_TEST_OUT/rank{RANK}.json."""

import json
import os

with open(os.path.join(os.environ["LFBM_TEST_OUT"], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(dict(os.environ), f)
