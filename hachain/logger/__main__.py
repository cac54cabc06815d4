"""`python -m hachain.logger`: the logger process (started by the restarter)."""

import sys

from hachain.logger.main import main

sys.exit(main())
