"""Text of the comparison reports' numbers: intervals, p-values, verdicts, figure names.

Shared by the comparison v2 report and the server map's document, so that both print a
t-interval, a p-value and a paired verdict the same way.
"""

import math
import re


def slug(*parts) -> str:
  """A file-name-safe name of a figure's parts."""
  return re.sub(r"[^A-Za-z0-9.]+", "_", "_".join(str(p) for p in parts if p)).strip("_")


def num(x: float, digits: int = 1) -> str:
  """`x` with `digits` decimals, or 'n/a' for None and non-finite values."""
  return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def p_text(p: float | None) -> str:
  """'p=0.01', 'p<0.001', 'p=0' (an exact difference) or 'p=n/a'."""
  if p is None:
    return "p=n/a"
  if p == 0:
    return "p=0"
  return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def interval_text(value, scale: float = 1.0, digits: int = 1) -> str:
  """'mean ± half-width' of a t-interval (the mean alone for one seed), or the text."""
  if value is None:
    return "—"
  if isinstance(value, str):
    return value
  mean = num(scale * value.mean, digits)
  if value.n < 2:
    return f"{mean} (n=1)"
  if value.std == 0:  # every seed the same (e.g. no bytes sent): no interval to show
    return mean
  return f"{mean} ± {num(scale * value.half_width, digits)}"


def verdict_text(c: dict | None, missing: str) -> str:
  """E.g. 'holds +2.1 [0.8, 3.4] p=0.01 n=3' (accuracy points)."""
  if c is None:
    return missing
  if c["note"]:
    mean = "" if c["mean"] is None else f" {100 * c['mean']:+.1f}"
    return f"{c['verdict']}{mean} n={c['n']} ({c['note']})"
  return (f"{c['verdict']} {100 * c['mean']:+.1f} [{num(100 * c['low'])}, "
          f"{num(100 * c['high'])}] {p_text(c['p'])} n={c['n']}")


def interval_with_std(value, scale: float = 1.0, digits: int = 1) -> str:
  """`interval_text` followed by the sample std, e.g. '91.3 ± 0.7 (sd 0.3)'."""
  text = interval_text(value, scale, digits)
  if value is None or isinstance(value, str) or value.n < 2:
    return text
  return f"{text} (sd {num(scale * value.std, digits)})"
