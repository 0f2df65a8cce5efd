"""A separate process using a shared preference store (run by test_preference_processes.py).

`python -m tests.contract.preference_worker URI COLLECTION CUBE NAME OTHER`: upserts NAME's
preferences one by one into CUBE, then searches until OTHER's show up; prints a JSON line.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from memos_ray.stores.preference import Preference
from memos_ray.stores.preference.milvus import MilvusPreferenceStore

DIM = 8
COUNT = 5


def main(uri: str, collection: str, cube: str, name: str, other: str) -> None:
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    store = MilvusPreferenceStore(DIM, uri=uri, collection=collection)
    for i in range(COUNT):
        item = Preference(
            id=f"{name}-{i}",
            cube_id=cube,
            user_id=name,
            kind="explicit",
            preference=f"Prefers {name}tea blend number {i}",
        )
        store.upsert(cube, [item], rng.random((1, DIM), dtype=np.float32))
    found: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        hits = store.search(cube, f"{other}tea", rng.random(DIM, dtype=np.float32), 2 * COUNT)
        found = sorted(h.id for h in hits if h.user_id == other)
        if len(found) == COUNT:
            break
        time.sleep(0.05)
    total = store.list(cube)[1]
    store.close()
    print(json.dumps({"name": name, "found": found, "total_seen": total}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
