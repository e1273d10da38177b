"""The checkpoint URI schemes hotswap reads, in one table.

The wire contract's URI pattern is built from it (and the CRD's pattern is checked
against that by a test), the operator's admission applies the admin's file roots to
`FILE`, and the runtime's store picks a fetcher by it. A new scheme goes here first.
"""

from __future__ import annotations

FILE = "file"  # a path in the pod, under the admin's file roots (policy.path_under)
REMOTE = ("http", "https", "s3", "oci", "hf", "gs", "az")  # over the network, each checked
SCHEMES = (FILE, *REMOTE)  # every scheme a checkpoint URI may have, in this order
LISTED = f"{', '.join(SCHEMES[:-1])} and {SCHEMES[-1]}"  # "file, http, ..., gs and az"
