"""What a test needs from the machine: absent, it skips saying why; under CI=true it fails."""
import os

import pytest


def skip_or_fail(why: str):
    """Skip saying why; under CI=true (where everything must be present) fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)
