"""What the report's figures share: matplotlib without a display, the colours, the grid of
panels and the PNG writer."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

DPI = 110
COLORS = plt.get_cmap("tab10").colors


def save(fig, path: str) -> str:
  """Writes `fig` as a PNG at `path`, closes it and returns the path."""
  fig.savefig(path, dpi=DPI, bbox_inches="tight")
  plt.close(fig)
  return path


def panels(n: int, cols: int, width: float, height: float):
  """A figure of `n` panels of `width` x `height` inches in rows of `cols` (the unused ones
  hidden), and its axes as a flat array."""
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
  for ax in axes.ravel()[n:]:
    ax.axis("off")
  return fig, axes.ravel()
