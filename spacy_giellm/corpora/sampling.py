"""Mixing datasets the way the paper did, and train/dev/test splits.

The GIELLM paper trained on 1,000 records each of SCNM, SCPOS:RW and TCREE
and 500 of each other SCPOS part (`PAPER_SIZES`).
"""
import random
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

T = TypeVar("T")

PAPER_SIZES: Dict[str, int] = {
    "scnm": 1000,
    "scpos-rw": 1000,
    "tcree": 1000,
    "scpos-n": 500,
    "scpos-adj": 500,
    "scpos-n-adj": 500,
}


def sample_mix(
    datasets: Mapping[str, Sequence[T]],
    sizes: Mapping[str, Optional[int]],
    seed: int = 0,
    allow_fewer: bool = False,
    repeats: Optional[Mapping[str, int]] = None,
) -> List[T]:
    """`sizes[name]` records drawn without replacement from each dataset,
    mixed in a seeded random order. A dataset without a size (or size None)
    is taken whole. Asking for more records than a dataset has is an error
    unless `allow_fewer` (then the whole dataset is taken). `repeats[name]`
    (default 1) puts each drawn record in the mix that many times:
    oversampling a small dataset so that training sees it as often as it
    needs. The result depends only on the data, the sizes, the repeats and
    the seed, not on dict order."""
    repeats = dict(repeats or {})
    unknown = sorted((set(sizes) | set(repeats)) - set(datasets))
    if unknown:
        raise ValueError(f"sizes or repeats for unknown dataset(s) {unknown}; datasets: {sorted(datasets)}")
    for name, times in repeats.items():
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"dataset {name!r}: repeats must be a whole number >= 1, got {times!r}")
    mixed: List[T] = []
    for name in sorted(datasets):
        records = list(datasets[name])
        size = sizes.get(name)
        if size is None:
            size = len(records)
        if size < 0:
            raise ValueError(f"dataset {name!r}: negative size {size}")
        if size > len(records):
            if not allow_fewer:
                raise ValueError(
                    f"dataset {name!r} has {len(records)} records, {size} were asked for "
                    f"(allow_fewer=True takes all {len(records)})"
                )
            size = len(records)
        rng = random.Random(f"{seed}:{name}")
        mixed.extend(rng.sample(records, size) * repeats.get(name, 1))
    random.Random(seed).shuffle(mixed)
    return mixed


def split_train_dev_test(
    records: Sequence[T], dev: Union[int, float], test: Union[int, float], seed: int = 0
) -> Tuple[List[T], List[T], List[T]]:
    """(train, dev, test) after a seeded shuffle. `dev` and `test` are
    record counts (int) or fractions of the records (float < 1; rounded)."""
    n = len(records)

    def count(value: Union[int, float], what: str) -> int:
        if isinstance(value, bool) or value < 0:
            raise ValueError(f"{what} must be a non-negative count or a fraction, got {value!r}")
        if isinstance(value, float) and value < 1:
            return round(value * n)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{what}={value!r}: a fraction is below 1, a count is whole")
        return int(value)

    n_dev, n_test = count(dev, "dev"), count(test, "test")
    if n_dev + n_test > n:
        raise ValueError(f"dev ({n_dev}) + test ({n_test}) is more than the {n} records")
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    return shuffled[n_dev + n_test :], shuffled[:n_dev], shuffled[n_dev : n_dev + n_test]
