"""Networks (which know nothing of SDEs) and the score parameterisation that connects them to an SDE."""

from cldsgm.models.score import ScoreParameterisation, reference_score

__all__ = ["ScoreParameterisation", "reference_score"]
