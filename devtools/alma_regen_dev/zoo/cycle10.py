"""Style cycle10: today's pipeline delivery, exactly `synthesize()` (see synth.py)."""
from ..synth import synthesize


def build(out, *, ebs: int, seed: int, runner=None, antennas: int = 8, sessions=None,
          restore_template: str = "current") -> dict:
    return synthesize(out, ebs=ebs, seed=seed, antennas=antennas, runner=runner, sessions=sessions,
                      restore_template=restore_template)
