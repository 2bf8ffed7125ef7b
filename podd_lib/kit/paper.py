"""The paper's reported numbers (method notes section 7), as data for tables and plots.

Accuracies are percentages, (mean, std) over 8 evaluation models. Nothing here is computed:
these are the values printed in the paper, always shown labelled "paper".
"""

from __future__ import annotations

DATASETS = ("cifar10", "cifar100", "cub200", "tinyimagenet")

# Table 1: PoDD at IPC < 1 (and the RaT-BPTT 1-IPC row, and the full dataset).
TABLE1_PODD: dict[float, dict[str, tuple[float, float]]] = {
    1.0: {"cifar10": (59.1, 0.5), "cifar100": (38.3, 0.2), "cub200": (16.2, 0.3), "tinyimagenet": (20.0, 0.3)},
    0.9: {"cifar10": (58.4, 0.5), "cifar100": (37.4, 0.2), "cub200": (15.2, 0.4), "tinyimagenet": (19.5, 0.2)},
    0.8: {"cifar10": (56.7, 0.7), "cifar100": (37.3, 0.1), "cub200": (15.6, 0.3), "tinyimagenet": (19.0, 0.2)},
    0.7: {"cifar10": (54.6, 0.5), "cifar100": (37.0, 0.2), "cub200": (15.0, 0.3), "tinyimagenet": (18.6, 0.1)},
    0.6: {"cifar10": (50.6, 0.3), "cifar100": (36.6, 0.3), "cub200": (15.1, 0.2), "tinyimagenet": (18.8, 0.2)},
    0.5: {"cifar10": (49.5, 0.5), "cifar100": (36.0, 0.3), "cub200": (15.0, 0.3), "tinyimagenet": (18.7, 0.1)},
    0.4: {"cifar10": (47.1, 0.4), "cifar100": (35.7, 0.2), "cub200": (15.0, 0.2), "tinyimagenet": (18.4, 0.2)},
    0.3: {"cifar10": (42.3, 0.3), "cifar100": (34.7, 0.2), "cub200": (14.8, 0.5), "tinyimagenet": (18.4, 0.1)},
}
RATBPTT_1IPC = {"cifar10": (53.2, 0.7), "cifar100": (35.3, 0.4), "cub200": (13.8, 0.3), "tinyimagenet": (20.1, 0.3)}
FULL_DATASET = {"cifar10": (83.5, 0.2), "cifar100": (55.3, 0.3), "cub200": (20.1, 0.3), "tinyimagenet": (37.6, 0.5)}

# Table 2: 1 IPC, other methods as reported (None = not reported). Means only; see the paper for stds.
TABLE2_REPORTED: dict[str, dict[str, float | None]] = {
    "BPTT": {"cifar10": 49.1, "cifar100": 21.3, "cub200": None, "tinyimagenet": None},
    "FRePo": {"cifar10": 45.6, "cifar100": 26.3, "cub200": None, "tinyimagenet": None},
    "RCIG": {"cifar10": 49.6, "cifar100": 35.5, "cub200": None, "tinyimagenet": None},
    "RaT-BPTT": {"cifar10": 53.2, "cifar100": 35.3, "cub200": 13.8, "tinyimagenet": 20.1},
    "DSA": {"cifar10": 28.8, "cifar100": 13.9, "cub200": 1.3, "tinyimagenet": 6.6},
    "DM": {"cifar10": 26.0, "cifar100": 11.4, "cub200": 1.6, "tinyimagenet": 3.9},
    "MTT": {"cifar10": 46.3, "cifar100": 24.3, "cub200": 2.2, "tinyimagenet": 8.8},
    "FTD": {"cifar10": 46.8, "cifar100": 25.2, "cub200": None, "tinyimagenet": 10.4},
    "TESLA": {"cifar10": 48.5, "cifar100": 24.8, "cub200": None, "tinyimagenet": None},
    "PoDD": {"cifar10": 59.1, "cifar100": 38.3, "cub200": 16.2, "tinyimagenet": 20.0},
}

# Figure 6: CIFAR-10, 1 IPC, 500 distillation steps; patch grid -> accuracy.
FIGURE6: dict[tuple[int, int], float] = {
    (5, 2): 45.15, (8, 3): 47.28, (10, 4): 56.77, (12, 5): 54.14, (16, 6): 56.73, (18, 7): 55.55, (20, 8): 57.61,
}

# Section 5.3: correlation between ordering score and accuracy (CIFAR-10, 0.3 IPC, 250 steps, 5 orders).
ORDER_CORRELATION = 0.76

# Notebook 07: the underlying methods at 1 IPC on CIFAR-10, as reported (not rerun).
# PoDD's Table 2 (RaT-BPTT, DSA, DM, MTT) and DREAM's Table 1 (DC, and DREAM on top of IDC).
ALGORITHMS_REPORTED_CIFAR10: dict[str, tuple[float, float | None, str]] = {
    "ratbptt": (53.2, 0.7, "PoDD Table 2 (RaT-BPTT)"),
    "mtt": (46.3, 0.8, "PoDD Table 2 / DREAM Table 1 (MTT)"),
    "dm": (26.0, 0.8, "PoDD Table 2 / DREAM Table 1 (DM)"),
    "dc": (28.8, 0.7, "PoDD Table 2 (DSA; DC without DSA: 28.3 in DREAM Table 1)"),
}
DREAM_REPORTED_CIFAR10 = {"IDC": (50.6, 0.4), "IDC + DREAM": (51.1, 0.3)}  # DREAM Table 1, 1 IPC
