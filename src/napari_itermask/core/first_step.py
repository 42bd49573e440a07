"""The names of the loop's first steps (a card's ``first_step``; ``core.engine`` runs them).

``f1``: the paper's first net, ``x'1 = f1(x_f)``. ``complementary``: the masked net on
complementary blob masks of the brain, each reconstructed from the rest of the slice plus x_f.
``both``: per pixel the larger of the two errors. Kept free of NumPy and torch so that reading a
model card stays cheap (docs/method.md §16).
"""

FIRST_STEPS = ("f1", "complementary", "both")
COMPLEMENTARY_MASKS = range(2, 9)  # how many blob masks a complementary first step may use
