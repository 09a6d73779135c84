"""Sample data and the seeded generators that made it (``synthetic.py``): tooling for tests, benchmarks and
``make data-full``, not part of the installed package."""
