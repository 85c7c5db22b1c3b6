"""Git's "racy" rule, for what is read from a file and kept while its stat stays the same.

A file's stat (inode, size, modification and change time) says it changed only if the change moved one of
them. On a file system whose timestamps tick in whole seconds (ext3 or ext4 with 128-byte inodes, some NFS
and SMB shares, overlays on some hosts) or two (FAT), a rewrite of the same size within the tick of the
write before keeps every one: what was read in that tick may be the older bytes, under a stat that no longer
changes. So what a read saw is trusted for its stat only once it is *settled*: read at least :data:`RACY_S`
(one tick of the coarsest of them) after this process first saw that stat, timed on the monotonic clock, not
by comparing the file's times with this host's clock, which a file server's clock need not agree with; until
then, each use reads the file again.

A file changed long before (its change time more than :data:`CHANGED_LONG_AGO_S` behind this host's clock,
a bound on any sane file server's drift) is settled at once: the tick of its last change is over, so a
later write moves its change time. That keeps an old, stable file, the common case, read once per process.
A change time cannot be set back (``cp -p`` and ``tar -x`` set the modification time only), so a release
copied with its old times is no such file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Hashable

__all__ = ["CHANGED_LONG_AGO_S", "RACY_S", "Sighting", "changed_long_ago", "sighting"]

RACY_S = 2.0
"""A stat first seen this recently (monotonic seconds) may hide a write within the same timestamp tick."""

CHANGED_LONG_AGO_S = 300.0
"""A file whose change time is this far behind this host's clock is settled at first sight: more than the
clock skew Kerberos tolerates (5 minutes), past which shared file systems' authentication fails anyway."""


class Sighting:
    """A file's signature (what its stat gave), when (monotonic) this process first saw it, and whether a read
    made with it is settled (made at least :data:`RACY_S` after that, or of a file changed long ago): then the
    bytes read are the last that signature can hide."""

    __slots__ = ("first_seen", "settled", "signature")

    def __init__(self, signature: Hashable, first_seen: float, *, settled: bool) -> None:
        self.signature = signature
        self.first_seen = first_seen
        self.settled = settled


def sighting(signature: Hashable, previous: Sighting | None, *, now: float, old: bool = False) -> Sighting:
    """The sighting for a read made at ``now`` (the monotonic clock, read after the stat that gave
    ``signature`` and before the file's bytes), given the last one (the first time is kept while the
    signature stays). ``old``: the file changed long ago (:func:`changed_long_ago`)."""
    first_seen = previous.first_seen if previous is not None and previous.signature == signature else now
    return Sighting(signature, first_seen, settled=old or now - first_seen >= RACY_S)


def changed_long_ago(stat: os.stat_result) -> bool:
    """Whether the file's change time is more than :data:`CHANGED_LONG_AGO_S` behind this host's clock."""
    return stat.st_ctime_ns < time.time_ns() - int(CHANGED_LONG_AGO_S * 1e9)
