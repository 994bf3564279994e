"""Seeded, stratified, group-aware train/valid/test splits for data sets that have none of their own.

Tiles cut from one source image always share a split (no leakage between train and test), and
each stratum (tissue, cohort) is spread over the splits in proportion, as CISCA's split does
(80/20 train+valid/test, then 90/10 train/valid).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.72, 0.08, 0.20)  # train, valid, test


def stratified_group_split(
    groups: Sequence[str],
    strata: Sequence[str],
    seed: int,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> list[str]:
    """A split name per item. Items of one group get one split; strata are spread proportionally.

    Every group gets a position in [0, 1) evenly spaced within its stratum after a seeded shuffle;
    positions below `test` go to test, then valid, the rest to train. With three or more groups,
    no split is left empty.
    """
    if len(groups) != len(strata):
        raise ValueError("groups and strata must have the same length")
    _, valid_fraction, test_fraction = fractions
    if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    group_stratum: dict[str, str] = {}
    for group, stratum in zip(groups, strata):
        group_stratum.setdefault(group, stratum)
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = {}
    for group in sorted(group_stratum):
        by_stratum.setdefault(group_stratum[group], []).append(group)
    position: dict[str, float] = {}
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        order = rng.permutation(len(members))
        offset = rng.random()  # so that small strata do not all start in the same split
        for rank, member_index in enumerate(order):
            position[members[member_index]] = ((rank + offset) / len(members)) % 1.0
    names = ("test", "valid", "train")
    bounds = (test_fraction, test_fraction + valid_fraction, 1.0 + 1e-9)
    split_of = {group: names[int(np.searchsorted(bounds, pos, side="right"))] for group, pos in position.items()}
    _fill_empty_splits(split_of, position, fractions)
    return [split_of[group] for group in groups]


def _fill_empty_splits(split_of: dict[str, str], position: dict[str, float], fractions: tuple[float, ...]) -> None:
    """Move one group into any wanted split that came out empty (tiny data sets)."""
    if len(split_of) < 3:
        return
    for name, fraction in zip(("test", "valid"), fractions[::-1][:2]):
        if fraction <= 0 or name in split_of.values():
            continue
        train_groups = sorted((g for g, s in split_of.items() if s == "train"), key=position.__getitem__)
        if len(train_groups) > 1:
            split_of[train_groups[0]] = name
