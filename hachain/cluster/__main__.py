"""`python -m hachain.cluster -c F`: the cluster layer (started by hachain-init when the
configuration has a `[cluster]` table)."""

from __future__ import annotations

import sys

from hachain.cluster.node import main

if __name__ == "__main__":
    sys.exit(main())
