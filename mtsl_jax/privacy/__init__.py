"""Privacy of what travels: leakage statistics, attacks and their metrics (docs/privacy.md)."""
