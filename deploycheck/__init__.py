"""deploycheck: declarative tests for deployed PyTorch models.

Specs in ``specs/*.yaml`` declare a model, its optimized variants, the formats it ships in
and the thresholds it must meet; the pytest plugin turns each promise into a test item.
"""

__version__ = "0.1.0"
