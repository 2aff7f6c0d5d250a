"""The published results on EGNN's charged N-body benchmark (5 particles, 3000 training systems, positions
1000 steps ahead, test pos MSE) that ours are read beside: each with its citation and training budget.

`checked` says where the number was read. The budgets are from each model's official code or README (the
papers' result tables could not be read here). Every codebase but ClofNet's loads the test set EGNN's
generator makes (seed 43, 2000 systems); ClofNet regenerates its own from the same distribution. All test
the checkpoint of the best validation epoch. The numbers are each paper's, over its own runs (PONITA and MVN:
the mean of 3 seeds); their run-to-run spread is not recorded here, so an anchor is a point, not an interval.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Anchor:
    model: str
    pos_mse: float
    citation: str
    budget: str  # epochs x training systems, batch, lr, optimiser and schedule
    checked: str  # where the number was read; "not checked here" where it was not


ANCHORS = (
    Anchor("EGNN", 0.0071, "Satorras, Hoogeboom, Welling, E(n) Equivariant Graph Neural Networks, ICML 2021, "
           "arXiv:2102.09844", "10000 epochs x 3000, batch 100, lr 5e-4, Adam, no schedule",
           "not checked here (PONITA's README lists EGNN at 0.0070)"),
    Anchor("ClofNet", 0.0065, "Du et al., SE(3) Equivariant Graph Neural Networks with Complete Local Frames, "
           "ICML 2022, arXiv:2110.14811", "400 epochs x 3000, batch 100, lr 1e-2, AdamW, step decay",
           "not checked here; its own regenerated test set"),
    Anchor("SEGNN", 0.0043, "Brandstetter, Hesselink, van der Pol, Bekkers, Welling, Geometric and Physical "
           "Quantities improve E(3) Equivariant Message Passing, ICLR 2022, arXiv:2110.02905",
           "1000 epochs x 3000, batch 100, lr 5e-4, Adam, no schedule", "PONITA's README (a copied baseline)"),
    Anchor("PONITA", 0.0043, "Bekkers et al., Fast, Expressive SE(n) Equivariant Networks through Weight-Sharing "
           "in Position-Orientation Space, ICLR 2024, arXiv:2310.02970",
           "10000 epochs x 3000, batch 100, lr 5e-4 or 1e-3 (the code changed), Adam, later cosine + rotations",
           "its README, mean of 3 seeds"),
    Anchor("CGENN", 0.0039, "Ruhe, Brandstetter, Forré, Clifford Group Equivariant Neural Networks, NeurIPS 2023, "
           "arXiv:2305.11141", "131072 steps of batch 100 (~4369 epochs x 3000), lr 4e-3, Adam, cosine",
           "not checked here"),
    Anchor("Multivector Neurons", 0.0035, "Liu, Ruhe, Forré, Multivector Neurons: Better and Faster O(n)-Equivariant "
           "Clifford Graph Neural Networks, 2024, arXiv:2406.04052",
           "131072 steps of batch 100 (~4369 epochs x 3000), lr 5e-3, Adam, cosine", "its abstract, mean of 3 runs"),
)
BY_MODEL = {a.model: a for a in ANCHORS}
