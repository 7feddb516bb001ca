"""pilearn: Pseudoinverse Learning — fixed seeded random features, linear maps solved in closed form."""

__version__ = "0.1.0"
