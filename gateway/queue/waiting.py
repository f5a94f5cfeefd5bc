"""The waiting records, in memory: per node, its records above its cut point and at or below
its ACK, in seq order, as segments (`Segment`), so that cutting a batch and `waiting()` need
no query.

A segment is a run of a node's waiting seqs with the same `eff`: the running max of the
receive times along the node's waiting seqs (it never decreases along them). Batches take
records oldest first by `eff` (ties by node id), which keeps every node's records in seq
order; one segment per store that advanced the ACK.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runs import Run


@dataclass(slots=True)
class Segment:
    hi: int          # the highest seq of the run
    eff: float       # the running max of receive times (the same for the whole run)
    count: int       # waiting records in it
    nbytes: int      # bytes of their record maps
    oldest: float    # receive times in it, lowest and highest
    newest: float


# (node, lo, hi) -> the segments of the node's records in (lo, hi], read from the file.
Query = Callable[[str, int, int], list[Segment]]


class Waiting:
    """Every node's waiting segments, with the totals (count, bytes) kept up to date.

    `cut_upto` is the queue's per-node cut point (shared, not copied): a node's waiting
    records start above it."""

    def __init__(self, query: Query, cut_upto: dict[str, int]) -> None:
        self.query = query
        self.cut_upto = cut_upto
        self.segs: dict[str, deque[Segment]] = {}
        self.count = 0
        self.nbytes = 0

    def oldest(self) -> float | None:
        """The receive time of the oldest waiting record (None when none waits)."""
        if not self.count:
            return None
        return min(seg.oldest for segs in self.segs.values() for seg in segs if seg.count > 0)

    def add(self, node: str, segments: list[Segment]) -> None:
        """Segments newly waiting at the end of `node`'s (after its ACK advanced)."""
        if not segments:
            return
        segs = self.segs.get(node)
        if segs is None:
            segs = self.segs[node] = deque()
        for seg in segments:
            if segs and segs[-1].eff > seg.eff:
                seg.eff = segs[-1].eff           # the running max goes on from the last one
            segs.append(seg)
            self.count += seg.count
            self.nbytes += seg.nbytes

    def replace(self, node: str, segments: list[Segment]) -> None:
        """All of `node`'s waiting segments, read again (after an eviction)."""
        for seg in self.segs.pop(node, ()):
            self.count -= seg.count
            self.nbytes -= seg.nbytes
        self.add(node, segments)

    def plan(self, limit: int) -> tuple[list[tuple[str, int]], dict[str, list[int]]]:
        """Up to `limit` waiting records, oldest first: (node, records) in merge order, and
        per node [records, highest seq] (what to read from the file)."""
        heap = [(segs[0].eff, node, 0) for node, segs in self.segs.items()]
        heapq.heapify(heap)
        plan: list[tuple[str, int]] = []
        take: dict[str, list[int]] = {}
        total = 0
        while heap and total < limit:
            _eff, node, i = heapq.heappop(heap)
            segs = self.segs[node]
            seg = segs[i]
            n = min(seg.count, limit - total)
            if n > 0:
                plan.append((node, n))
                t = take.setdefault(node, [0, 0])
                t[0] += n
                t[1] = seg.hi
                total += n
            if i + 1 < len(segs):
                heapq.heappush(heap, (segs[i + 1].eff, node, i + 1))
        return plan, take

    def unwait(self, node: str, seq: int) -> None:
        """A waiting record was evicted: its segment is read again (its count, and the
        receive times the running max goes by)."""
        segs = self.segs.get(node)
        if segs:
            i = bisect.bisect_left(segs, seq, key=lambda seg: seg.hi)
            if i < len(segs):
                self._resegment(node, i)

    def _resegment(self, node: str, i: int) -> None:
        """Read segment `i` of `node` again from the file, then carry the running max on."""
        segs = self.segs[node]
        lo = segs[i - 1].hi if i else self.cut_upto.get(node, 0)
        old = segs[i]
        fresh = self.query(node, lo, old.hi)
        self.count += sum(seg.count for seg in fresh) - old.count
        self.nbytes += sum(seg.nbytes for seg in fresh) - old.nbytes
        del segs[i]
        for seg in reversed(fresh):
            segs.insert(i, seg)
        if not segs:
            del self.segs[node]
        else:
            self._carry(segs, max(i - 1, 0))

    @staticmethod
    def _carry(segs: deque[Segment], i: int) -> None:
        """Recompute the running max (eff) from segment `i` on; stops where it is unchanged."""
        run = segs[i - 1].eff if i else None
        for j in range(i, len(segs)):
            seg = segs[j]
            run = seg.newest if run is None or seg.newest > run else run
            if seg.eff == run and j > i:
                break
            seg.eff = run

    def consume(self, node: str, taken: list[tuple[int, int, Run]]) -> None:
        """Records of `node`, a prefix of its waiting ones, were cut: (lo, hi, the run they
        are in) in seq order; take them out of its segments."""
        segs = self.segs.get(node)
        if not segs:
            return
        for lo, hi, run in taken:
            a = lo
            while a <= hi:
                while len(segs) > 1 and segs[0].hi < a:
                    self._pop(segs)              # exhausted (its count is 0 now)
                seg = segs[0]
                b = min(hi, seg.hi) if seg.hi >= a else hi
                n, nbytes = b - a + 1, run.end(b) - run.start(a)
                seg.count -= n
                seg.nbytes -= nbytes
                self.count -= n
                self.nbytes -= nbytes
                a = b + 1
        last = taken[-1][1]
        while segs and (segs[0].hi <= last or segs[0].count <= 0):
            self._pop(segs)
        if not segs:
            del self.segs[node]
            return
        front = segs[0]
        if front.oldest != front.newest:
            # Part of a segment of several receive times was cut: the running max of what is
            # left starts again from its own records (as a scan from the cut point would).
            self._resegment(node, 0)
        else:
            self._carry(segs, 0)

    def _pop(self, segs: deque[Segment]) -> None:
        seg = segs.popleft()
        self.count -= seg.count                  # 0 unless the records were counted twice
        self.nbytes -= seg.nbytes
