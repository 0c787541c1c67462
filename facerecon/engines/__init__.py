"""Batch engines beyond one machine's worker processes (facerecon.pool): ``ray_engine`` (Ray actors)."""
