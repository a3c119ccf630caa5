"""Training: render synthetic problem-book photos, train both models, write a pack.

``python -m workers.training --help`` lists the commands; ``models/README.md`` has
the exact ones that made the reference pack.
"""
