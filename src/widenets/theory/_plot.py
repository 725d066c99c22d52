"""matplotlib with the non-interactive Agg backend (figures are returned, never shown)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt"]
